// The engine process end to end on the tiny fixture checkpoint: real Imagic training and rendering
// through the queue, health/readiness/metrics over HTTP, job types without a pipeline refused.
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../../src/config.js";
import { type RunningEngine, startEngine } from "../../../src/engine/worker/index.js";
import type { QueueClient, QueueClientEvents } from "../../../src/queue/client.js";
import type { JobResult } from "../../../src/queue/jobs.js";
import { FAST, freePort, type Harness, harness, origin, PHOTO, until } from "../../queue/support/setup.js";

const config = loadConfig(
  { ENGINE_DEVICE: "cpu", ENGINE_DTYPE: "fp32", ENGINE_HTTP_PORT: "0", LOG_LEVEL: "silent" },
  { envFile: false },
);

let h: Harness;
let client: QueueClient;
let engine: RunningEngine;
let base: string;
const completed: QueueClientEvents["completed"][0][] = [];
const failed: QueueClientEvents["failed"][0][] = [];
const stages: string[] = [];

beforeAll(async () => {
  h = await harness();
  client = await h.client({ consumer: "test" });
  client.events.on("completed", (e) => void completed.push(e));
  client.events.on("failed", (e) => void failed.push(e));
  client.events.on(
    "progress",
    (e) => void stages.push(`${e.progress.stage} ${e.progress.step}/${e.progress.total}`),
  );
  await client.listen();
  engine = await startEngine({
    config: { ...config, engineHttpPort: await freePort() },
    redisUrl: h.redis.url,
    // A long lock: building and compiling the model's graphs blocks the event loop for seconds.
    worker: { ...FAST, lockDurationMs: 60_000 },
  });
  base = `http://127.0.0.1:${engine.httpPort}`;
});
afterAll(async () => {
  await engine?.stop();
  await h.close();
});

async function get(path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, body: await res.text() };
}

describe("the engine on the fixture model", () => {
  it("is healthy and ready once the model is loaded", async () => {
    expect(engine.modelId).toBe(config.model);
    expect(await get("/healthz")).toEqual({ status: 200, body: '{"ok":true,"detail":{"redis":"up"}}\n' });
    const ready = await get("/readyz");
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body).detail).toEqual({ redis: "up", model: config.model, worker: "running" });
  });

  it("trains Imagic on a photo through the queue, then renders an η sweep from the stored state", async () => {
    const photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
    const { jobId } = await client.enqueue("imagic.train", {
      userId: "u1",
      origin,
      imageBlobId: photo,
      prompt: "a photo of a sleeping cat",
      options: {
        preset: "fast",
        embeddingSteps: 2,
        finetuneSteps: 2,
        // A forced 3:2 size: the photo covers 96×64, worked at 128×64 (the fixture's multiple of 64).
        width: 96,
        height: 64,
        seeds: [1, 2],
        eta: 1,
        steps: 2,
      },
    });
    await until(() => completed.some((e) => e.jobId === jobId), 120_000, "imagic.train");
    expect(stages).toEqual(
      expect.arrayContaining(["encode 1/1", "embedding 1/2", "embedding 2/2", "finetune 2/2", "render 2/2"]),
    );
    const trained = completed.find((e) => e.jobId === jobId)?.result as JobResult<"imagic.train">;
    expect(trained.images.map((i) => [i.seed, i.eta])).toEqual([
      [1, 1],
      [2, 1],
    ]);
    for (const image of trained.images) {
      const meta = await sharp(await h.blobs.get(image.blobId)).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(["png", 96, 64]);
    }
    const grid = await sharp(await h.blobs.get(trained.gridBlobId)).metadata();
    expect([grid.width, grid.height]).toEqual([2 * 96 + 3 * 4, 64 + 2 * 4]);

    const render = await client.enqueue("imagic.render", {
      userId: "u1",
      origin,
      stateBlobId: trained.stateBlobId,
      seeds: [2],
      etas: [0.5, 1],
      steps: 2,
    });
    await until(() => completed.some((e) => e.jobId === render.jobId), 120_000, "imagic.render");
    const rendered = completed.find((e) => e.jobId === render.jobId)?.result as JobResult<"imagic.render">;
    expect(rendered.images.map((i) => [i.seed, i.eta])).toEqual([
      [2, 0.5],
      [2, 1],
    ]);
    // The render at η 1 with seed 2 repeats the training job's own tile for seed 2.
    expect(rendered.images[1]?.blobId).toBe(trained.images[1]?.blobId);

    const metrics = (await get("/metrics")).body;
    expect(metrics).toMatch(/engine_job_duration_seconds_count\{type="imagic.train",outcome="completed"\} 1/);
    expect(metrics).toMatch(/engine_step_seconds_count\{type="imagic.train",stage="embedding"\} 1/);
    expect(metrics).toMatch(/engine_queue_depth\{state="prioritized"\} 0/);
    expect(metrics).toMatch(/engine_ready 1/);
    expect(metrics).toMatch(/engine_jobs_active 0/);
    expect(metrics).toMatch(/engine_jobs_started_total\{type="imagic.train"\} 1/);
  });

  it("fails a swap whose reference is not a photo with the reference named, before learning anything", async () => {
    const source = await h.blobs.put(PHOTO, { userId: "u2", kind: "image" });
    const reference = await h.blobs.put(Buffer.from("these bytes are not a photo"), {
      userId: "u2",
      kind: "image",
    });
    const { jobId } = await client.enqueue("swap.edit", {
      userId: "u2",
      origin,
      sourceBlobId: source,
      referenceBlobIds: [reference],
      subject: "cat",
    });
    await until(() => failed.some((e) => e.jobId === jobId), 20_000, "the swap's failure");
    expect(failed.find((e) => e.jobId === jobId)?.message).toMatch(/^reference photo 1: /);
  });

  it("refuses a blob that is not an Imagic state with a message, without retrying", async () => {
    const { jobId } = await client.enqueue("imagic.render", {
      userId: "u3",
      origin,
      stateBlobId: await h.blobs.put(Buffer.from("short-lived"), {
        userId: "u3",
        kind: "state",
        quota: false,
      }),
      seeds: [1],
      etas: [1],
    });
    await until(() => failed.some((e) => e.jobId === jobId), 20_000, "the render's failure");
    expect(failed.find((e) => e.jobId === jobId)?.message).toMatch(/^not a usable Imagic state: /);
    expect((await client.queue.getJob(jobId))?.attemptsMade).toBe(1);
  });
});
