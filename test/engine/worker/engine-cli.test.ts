// `engine` as an operator runs it: a process against REDIS_URL that serves jobs, answers its probes
// and stops cleanly on SIGTERM.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { QueueClientEvents } from "../../../src/queue/client.js";
import { spawnCli, waitForLog } from "../../cli/run-cli.js";
import { freePort, type Harness, harness, origin, PHOTO, until } from "../../queue/support/setup.js";

let h: Harness;
beforeAll(async () => {
  h = await harness();
});
afterAll(() => h.close());

it("serves jobs from REDIS_URL, is ready on ENGINE_HTTP_PORT, and exits 0 on SIGTERM", async () => {
  const port = await freePort();
  const engine = spawnCli(["engine"], {
    REDIS_URL: h.redis.url,
    ENGINE_HTTP_PORT: String(port),
    ENGINE_DEVICE: "cpu",
  });
  const exited = new Promise<number | null>((resolve) => engine.once("exit", resolve));
  await waitForLog(engine, "engine ready: taking jobs");
  const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
  expect(ready.status).toBe(200);

  const client = await h.client({ consumer: "cli-test" });
  const failed: QueueClientEvents["failed"][0][] = [];
  client.events.on("failed", (e) => void failed.push(e));
  await client.listen();
  const { jobId } = await client.enqueue("swap.edit", {
    userId: "u1",
    origin,
    sourceBlobId: await h.blobs.put(PHOTO, { userId: "u1", kind: "image" }),
    referenceBlobIds: [await h.blobs.put(Buffer.from("not a photo"), { userId: "u1", kind: "image" })],
    subject: "cat",
  });
  await until(() => failed.length > 0, 20_000, "the engine to refuse the swap");
  expect(failed[0]?.jobId).toBe(jobId);
  expect(failed[0]?.message).toMatch(/^reference photo 1: /);

  const stopping = waitForLog(engine, "engine stopping: finishing or handing back the current job");
  process.kill(-(engine.pid as number), "SIGTERM");
  await stopping;
  expect(await exited).toBe(0);
  expect(await client.queue.getWorkersCount()).toBe(0);
});
