// Crash safety: a worker SIGKILLed mid-job, and Redis restarted mid-run.
import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { QueueClient, QueueClientEvents } from "../../src/queue/client.js";
import { lightweightPipelines } from "./support/pipelines.js";
import { type Harness, harness, origin, PHOTO, until } from "./support/setup.js";
import { killWorkerProcess, startWorkerProcess } from "./support/worker-process.js";

let h: Harness;
let photo: string;
const children: ChildProcess[] = [];
beforeAll(async () => {
  h = await harness();
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
});
afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await h.close();
});

async function startChild(name: string, env: Record<string, string>): Promise<ChildProcess> {
  const child = await startWorkerProcess(h.redis.url, name, env);
  children.push(child);
  return child;
}

type Completed = QueueClientEvents["completed"][0];

/** A bot process's view: a named consumer that collects completed events. */
async function consumer(name = "bot"): Promise<{ client: QueueClient; completed: Completed[] }> {
  const client = await h.client({ consumer: name });
  const completed: Completed[] = [];
  client.events.on("completed", (e) => void completed.push(e));
  await client.listen();
  return { client, completed };
}

describe("crash safety", () => {
  it("a job whose worker is SIGKILLed mid-job is completed once by the restarted worker, its result posted once", async () => {
    const bot = await consumer();
    const steps = { STEPS: "10", STEP_MS: "60" };
    const first = await startChild("gpu-1", steps);
    const { jobId } = await bot.client.enqueue("imagic.train", {
      userId: "u1",
      origin,
      imageBlobId: photo,
      prompt: "a dog",
    });
    let step = 0;
    bot.client.events.on("progress", (e) => {
      step = e.progress.step;
    });
    await until(() => step >= 3, 10_000, "progress");
    await killWorkerProcess(first);
    // The bot goes down too; it must get the result when it comes back, not lose it nor post it twice.
    await bot.client.close();

    await startChild("gpu-1-restarted", steps);
    const watcher = await h.client();
    await until(
      async () => (await watcher.queue.getJobState(jobId)) === "completed",
      20_000,
      "completion after the crash",
    );

    const runs = await h.redis.client().lrange("test:runs", 0, -1);
    expect(runs).toEqual([
      `start ${jobId} gpu-1`,
      `start ${jobId} gpu-1-restarted`,
      `finish ${jobId} gpu-1-restarted`,
    ]);
    const back = await consumer();
    await until(() => back.completed.length > 0, 10_000, "the replayed completion");
    const again = await consumer();
    await new Promise((r) => setTimeout(r, 500));
    expect(back.completed.map((e) => e.jobId)).toEqual([jobId]);
    expect(again.completed).toEqual([]);
    const result = back.completed[0]?.result as { gridBlobId: string };
    expect(await h.blobs.get(result.gridBlobId)).toBeDefined();
  });

  it("loses nothing when Redis restarts mid-run (append-only file)", async () => {
    const bot = await consumer("another-bot");
    await h.worker({ pipelines: lightweightPipelines({ steps: 5, stepMs: 50 }) });
    const ids: string[] = [];
    for (let u = 0; u < 4; u++) {
      const state = await h.blobs.put(Buffer.concat([Buffer.from(`prompt ${u}\n`), PHOTO]), {
        userId: `r${u}`,
        kind: "state",
      });
      const job = { userId: `r${u}`, origin, stateBlobId: state, seeds: [u], etas: [1] };
      ids.push((await bot.client.enqueue("imagic.render", job)).jobId);
    }
    await until(() => bot.completed.length >= 1, 10_000, "a first completion");
    await h.redis.restart({ downMs: 300 });
    await until(() => bot.completed.length === 4, 30_000, "every job after the restart");
    expect(bot.completed.map((e) => e.jobId).sort()).toEqual([...ids].sort());
    for (const e of bot.completed) {
      const { gridBlobId } = e.result as { gridBlobId: string };
      expect(await h.blobs.get(gridBlobId)).toBeDefined();
    }
    const states = await Promise.all(ids.map((id) => bot.client.queue.getJobState(id)));
    expect(states).toEqual(["completed", "completed", "completed", "completed"]);
    expect(await bot.client.queue.getJobCounts("failed", "active", "prioritized", "delayed")).toEqual({
      failed: 0,
      active: 0,
      prioritized: 0,
      delayed: 0,
    });
  });

  it("fails a job whose engine dies on every run after its third run, and tells the user in plain words", async () => {
    // Only the engines below run it: the earlier tests' are gone.
    await h.stopWorkers();
    for (const child of children) await killWorkerProcess(child);
    const bot = await h.client({ consumer: "crash-loop-bot" });
    const failed: QueueClientEvents["failed"][0][] = [];
    bot.events.on("failed", (e) => void failed.push(e));
    await bot.listen();
    const { jobId } = await bot.enqueue("imagic.train", {
      userId: "k1",
      origin,
      imageBlobId: photo,
      prompt: "a dog",
    });
    const starts = async () =>
      (await h.redis.client().lrange("test:runs", 0, -1)).filter((r) => r.startsWith(`start ${jobId} `));
    // Each engine dies under the job (as the OOM killer would kill it) once it has started it.
    for (let run = 1; run <= 3; run++) {
      const engine = await startChild(`oom-${run}`, { STEPS: "1000", STEP_MS: "50" });
      await until(async () => (await starts()).length === run, 20_000, `run ${run} of the job`);
      await killWorkerProcess(engine);
    }
    await startChild("oom-4", {});
    await until(() => failed.length > 0, 20_000, "the job's failure");
    expect(failed.map((e) => e.jobId)).toEqual([jobId]);
    expect(failed[0]?.cancelled).toBe(false);
    expect(failed[0]?.message).toBe(
      "the engine stopped (it crashed, ran out of memory or stopped responding) each of the 3 times it ran " +
        `job ${jobId}, so it is not tried again; try a smaller photo or a lighter preset, or ask the operators`,
    );
    expect(await starts()).toEqual([`start ${jobId} oom-1`, `start ${jobId} oom-2`, `start ${jobId} oom-3`]);
  });
});
