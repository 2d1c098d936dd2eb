// Jobs through the queue end to end, with in-process workers running lightweight pipelines.
import sharp from "sharp";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DeviceMemoryError } from "../../src/engine/runtime/session.js";
import { UserFacingError } from "../../src/errors.js";
import type { QueueClient, QueueClientEvents } from "../../src/queue/client.js";
import type { JobName } from "../../src/queue/jobs.js";
import { keys, queueKeys } from "../../src/queue/keys.js";
import { type JobOutcome, type PipelineRegistry, PREVIEW_TTL_SECONDS } from "../../src/queue/worker.js";
import { lightweightPipelines } from "./support/pipelines.js";
import { FAST, type Harness, harness, LIMITS, origin, PHOTO, PHOTO2, until } from "./support/setup.js";

let h: Harness;
let client: QueueClient;
let photo: string;
/** A state blob as the lightweight imagic.train writes it (prompt line, then the photo). */
let state: string;
const events: { [K in keyof QueueClientEvents]: QueueClientEvents[K][0][] } = {
  progress: [],
  completed: [],
  failed: [],
};
const runs: string[] = [];
const onRun = (event: "start" | "finish", name: JobName, jobId: string) =>
  void runs.push(`${event} ${name} ${jobId}`);

beforeAll(async () => {
  h = await harness();
  client = await h.client({ consumer: "test", limits: { maxQueued: 10 } });
  client.events.on("progress", (e) => void events.progress.push(e));
  client.events.on("completed", (e) => void events.completed.push(e));
  client.events.on("failed", (e) => void events.failed.push(e));
  await client.listen();
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
});
afterAll(() => h.close());
beforeEach(async () => {
  await h.stopWorkers();
  // Job ids start again at 1 on an empty Redis: nothing of the previous test (cancel flags) may stay.
  await h.redis.client().flushall();
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
  state = await h.blobs.put(Buffer.concat([Buffer.from("a dog\n"), PHOTO]), { userId: "u1", kind: "state" });
  for (const list of Object.values(events)) list.length = 0;
  runs.length = 0;
});

const train = (userId = "u1") => ({
  userId,
  origin,
  imageBlobId: photo,
  prompt: "a dog",
  options: { seeds: [1, 2, 3] },
});
const render = (userId = "u1") => ({ userId, origin, stateBlobId: state, seeds: [1], etas: [1] });
const completedIds = () => events.completed.map((e) => e.jobId);

describe("a job end to end", () => {
  it("trains, reports progress with throttled previews, stores result blobs and posts the result once", async () => {
    await h.worker({
      pipelines: lightweightPipelines({ steps: 4, stepMs: 30, onRun }),
      previewIntervalMs: 60_000,
    });
    const { jobId } = await client.enqueue("imagic.train", train());
    await until(() => completedIds().includes(jobId), 10_000, "completion");

    const progress = events.progress.filter((e) => e.jobId === jobId).map((e) => e.progress);
    expect(progress.map((p) => `${p.stage} ${p.step}/${p.total}`)).toEqual([
      "embedding 1/4",
      "embedding 2/4",
      "embedding 3/4",
      "embedding 4/4",
      "finetune 1/4",
      "finetune 2/4",
      "finetune 3/4",
      "finetune 4/4",
    ]);
    expect(progress[3]?.loss).toBe(0.25);
    expect(progress[2]?.etaSeconds).toBeGreaterThan(0);
    // One preview per minute at most: only the first report carries one, and it is a stored PNG.
    const previews = progress.filter((p) => p.previewBlobId);
    expect(previews).toHaveLength(1);
    expect((await sharp(await h.blobs.get(previews[0]?.previewBlobId as string)).metadata()).format).toBe(
      "png",
    );
    // A preview is kept minutes (it is shown at once, then replaced), not the results' lifetime.
    const ttl = (id: string) => h.redis.client().pttl(keys.blob(id));
    expect(await ttl(previews[0]?.previewBlobId as string)).toBeLessThanOrEqual(PREVIEW_TTL_SECONDS * 1000);
    expect(await ttl(previews[0]?.previewBlobId as string)).toBeGreaterThan(0);

    const done = events.completed.filter((e) => e.jobId === jobId);
    expect(done).toHaveLength(1);
    const result = done[0]?.result as {
      stateBlobId: string;
      images: { seed: number; blobId: string }[];
      gridBlobId: string;
    };
    expect(result.images.map((i) => i.seed)).toEqual([1, 2, 3]);
    expect(await ttl(result.gridBlobId)).toBeGreaterThan((LIMITS.ttlSeconds - 60) * 1000);
    const grid = await sharp(await h.blobs.get(result.gridBlobId)).metadata();
    expect([grid.width, grid.height]).toEqual([96, 32]);
    expect((await h.blobs.get(result.stateBlobId))?.subarray(0, 6).toString()).toBe("a dog\n");
    expect(runs).toEqual([`start imagic.train ${jobId}`, `finish imagic.train ${jobId}`]);
    // The next estimate uses this run's duration instead of the first guess (300 s).
    const durations = queueKeys().durations("imagic.train");
    await until(async () => (await h.redis.client().llen(durations)) === 1, 5_000, "the recorded duration");
    const eta = (await client.enqueue("imagic.train", train("u9"))).position.etaSeconds;
    expect(eta).toBeLessThan(10);
  });

  it("fails a job type without a pipeline at once with a message for the user", async () => {
    const { "imagic.render": only } = lightweightPipelines();
    await h.worker({ pipelines: { "imagic.render": only } });
    const { jobId } = await client.enqueue("imagic.train", train());
    await until(() => events.failed.length > 0, 10_000, "failure");
    expect(events.failed[0]).toMatchObject({
      jobId,
      message: "imagic.train is not available yet on this engine",
    });
    expect((await client.queue.getJob(jobId))?.attemptsMade).toBe(1);
  });

  it("retries a transient fault with backoff, but not bad input", async () => {
    let calls = 0;
    const pipelines: PipelineRegistry = {
      ...lightweightPipelines(),
      "imagic.render": async () => {
        calls++;
        if (calls === 1) throw new Error("ECONNRESET on the GPU host");
        throw new UserFacingError("the state was made by another model; train again");
      },
    };
    await h.worker({ pipelines });
    const { jobId } = await client.enqueue("imagic.render", render());
    await until(() => events.failed.length > 0, 10_000, "failure");
    expect(calls).toBe(2);
    expect(events.failed[0]).toMatchObject({
      jobId,
      message: "the state was made by another model; train again",
    });
  });

  it("fails a job that runs out of GPU memory once, with a message the user understands", async () => {
    let calls = 0;
    const pipelines: PipelineRegistry = {
      ...lightweightPipelines(),
      "imagic.render": async () => {
        calls++;
        throw new DeviceMemoryError("cuda", "CUDA failure 2: out of memory ; GPU=0");
      },
    };
    await h.worker({ pipelines });
    const { jobId } = await client.enqueue("imagic.render", render());
    await until(() => events.failed.length > 0, 10_000, "failure");
    expect(events.failed[0]).toMatchObject({
      jobId,
      message:
        "the engine's GPU ran out of memory on this edit: try a smaller photo or a lighter preset, or try again later",
    });
    expect(calls).toBe(1);
    expect((await client.queue.getJob(jobId))?.attemptsMade).toBe(1);
  });

  it("gives a user the job id, not the internals, when a job keeps failing", async () => {
    await h.worker({ pipelines: { "imagic.render": () => Promise.reject(new TypeError("x is undefined")) } });
    const { jobId } = await client.enqueue("imagic.render", render());
    await until(() => events.failed.length > 0, 10_000, "failure");
    expect(events.failed[0]?.message).toBe(
      `the engine hit an unexpected error on imagic.render job ${jobId}; the operators can look it up`,
    );
    expect((await client.queue.getJob(jobId))?.attemptsMade).toBe(2);
  });
});

describe("cancel and shutdown", () => {
  it("stops a running job between steps when its user cancels it", async () => {
    await h.worker({ pipelines: lightweightPipelines({ steps: 100, stepMs: 20, onRun }) });
    const { jobId } = await client.enqueue("imagic.train", train());
    await until(() => events.progress.some((e) => e.progress.step >= 2), 10_000, "progress");
    expect(await client.cancel(jobId, "u1")).toBe("cancelling");
    await until(() => events.failed.length > 0, 10_000, "cancellation");
    expect(events.failed[0]).toMatchObject({
      jobId,
      cancelled: true,
      message: "cancelled at the user's request",
    });
    expect(runs).toEqual([`start imagic.train ${jobId}`]);
    expect(events.progress.length).toBeLessThan(50);
  });

  it("hands the running job back on shutdown, and another worker completes it", async () => {
    const outcomes: JobOutcome[] = [];
    const leaving = await h.worker({
      pipelines: lightweightPipelines({ steps: 100, stepMs: 20, onRun }),
      observer: { jobFinished: (_name, outcome) => outcomes.push(outcome) },
    });
    const { jobId } = await client.enqueue("imagic.train", train());
    await until(() => events.progress.length > 0, 10_000, "progress");
    await leaving.close(100);
    expect(outcomes).toEqual(["handed-back"]);
    expect((await client.position(jobId)).state).toBe("waiting");
    await h.worker({ pipelines: lightweightPipelines({ steps: 2, onRun }) });
    await until(() => completedIds().includes(jobId), 10_000, "completion");
    expect(runs.filter((r) => r.startsWith("finish"))).toEqual([`finish imagic.train ${jobId}`]);
  });
});

describe("a lost lock", () => {
  it("stops a run whose lock was lost to a blocked event loop, and the job runs again and completes once", async () => {
    const light = lightweightPipelines({ onRun });
    let blocked = false;
    const pipelines: PipelineRegistry = {
      "imagic.render": async (ctx) => {
        runs.push(`enter ${ctx.jobId}`);
        if (!blocked) {
          blocked = true;
          // One synchronous step (an onnxruntime run) longer than the lock: no timer renews it meanwhile.
          const end = Date.now() + 2.5 * (FAST.lockDurationMs ?? 0);
          while (Date.now() < end) {}
          // Then more steps, each checking the signal as a pipeline's do.
          for (let step = 0; step < 100; step++) {
            await new Promise((resolve) => setTimeout(resolve, 20));
            ctx.signal.throwIfAborted();
          }
          runs.push(`unstopped ${ctx.jobId}`);
        }
        return (light["imagic.render"] as NonNullable<PipelineRegistry["imagic.render"]>)(ctx);
      },
    };
    await h.worker({ pipelines });
    const { jobId } = await client.enqueue("imagic.render", render());
    await until(() => completedIds().includes(jobId), 15_000, "completion");
    expect(runs).toEqual([
      `enter ${jobId}`,
      `enter ${jobId}`,
      `start imagic.render ${jobId}`,
      `finish imagic.render ${jobId}`,
    ]);
    expect(completedIds()).toEqual([jobId]);
  });
});

describe("scheduling", () => {
  it("runs renders before training that was queued earlier", async () => {
    const t = await client.enqueue("imagic.train", train("a"));
    const r = await client.enqueue("imagic.render", render("b"));
    await h.worker({ pipelines: lightweightPipelines({ steps: 1 }) });
    await until(() => events.completed.length === 2, 10_000, "both jobs");
    expect(completedIds()).toEqual([r.jobId, t.jobId]);
  });

  it("shares one queue between two workers, each job run once", async () => {
    const pipelines = lightweightPipelines({ steps: 2, stepMs: 40, onRun });
    await h.worker({ pipelines, name: "gpu-a" });
    await h.worker({ pipelines, name: "gpu-b" });
    const ids = [];
    for (let u = 0; u < 6; u++) ids.push((await client.enqueue("imagic.render", render(`user${u}`))).jobId);
    await until(() => events.completed.length === 6, 10_000, "six jobs");
    expect(completedIds().sort()).toEqual([...ids].sort());
    const by = await Promise.all(ids.map(async (id) => (await client.queue.getJob(id))?.processedBy));
    expect(new Set(by)).toEqual(new Set(["gpu-a", "gpu-b"]));
    expect(runs.filter((r) => r.startsWith("start"))).toHaveLength(6);
  });

  it("runs at most maxActivePerUser jobs of one user at once across workers", async () => {
    const pipelines = lightweightPipelines({ steps: 3, stepMs: 40 });
    await h.worker({ pipelines, maxActivePerUser: 1 });
    await h.worker({ pipelines, maxActivePerUser: 1 });
    const mine = [
      await client.enqueue("imagic.render", render("busy")),
      await client.enqueue("imagic.render", render("busy")),
    ];
    const other = await client.enqueue("imagic.render", render("other"));
    await until(() => events.completed.length === 3, 10_000, "three jobs");
    const [a, b] = await Promise.all(mine.map(async (j) => client.queue.getJob(j.jobId)));
    const spans = [a, b]
      .map((j) => [j?.processedOn ?? 0, j?.finishedOn ?? 0] as const)
      .sort((x, y) => x[0] - y[0]);
    expect(spans[1]?.[0]).toBeGreaterThanOrEqual(spans[0]?.[1] ?? Number.POSITIVE_INFINITY);
    expect(completedIds()).toContain(other.jobId);
  });
});

describe("a user's running slots", () => {
  it("holds a user's slot as long as their job runs, past the slot's lease", async () => {
    // The first job runs until the test lets it go: longer than a slot lives unrenewed (2 × lockDuration).
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const light = lightweightPipelines({ onRun });
    let calls = 0;
    const pipelines: PipelineRegistry = {
      "imagic.render": async (ctx) => {
        runs.push(`enter ${ctx.jobId}`);
        if (calls++ === 0) await held;
        return (light["imagic.render"] as NonNullable<PipelineRegistry["imagic.render"]>)(ctx);
      },
    };
    await h.worker({ pipelines, maxActivePerUser: 1 });
    await h.worker({ pipelines, maxActivePerUser: 1 });
    const first = await client.enqueue("imagic.render", render("long"));
    await until(() => runs.includes(`enter ${first.jobId}`), 5_000, "the first job running");
    const second = await client.enqueue("imagic.render", render("long"));
    // The other worker takes the second job and puts it back every 2 s while the first holds the slot:
    // by its fourth take the first job has run for more than twice the slot's lease.
    const takes = async () => (await client.queue.getJob(second.jobId))?.attemptsStarted ?? 0;
    try {
      await until(
        async () => runs.includes(`enter ${second.jobId}`) || (await takes()) >= 4,
        20_000,
        "the second job taken four times, or run",
      );
      expect(runs).not.toContain(`enter ${second.jobId}`);
    } finally {
      release();
    }
    await until(() => completedIds().includes(second.jobId), 10_000, "the second job");
    expect(runs.indexOf(`enter ${second.jobId}`)).toBeGreaterThan(
      runs.indexOf(`finish imagic.render ${first.jobId}`),
    );
  });
});

describe("swap flows", () => {
  it("learns a concept once, then swaps with it; the next swap of the same references reuses it", async () => {
    await h.worker({ pipelines: lightweightPipelines({ steps: 2, onRun }) });
    const reference = await h.blobs.put(PHOTO2, { userId: "u1", kind: "image" });
    const swap = { userId: "u1", origin, sourceBlobId: photo, referenceBlobIds: [reference], subject: "cat" };
    const first = await client.enqueue("swap.edit", swap);
    await until(() => completedIds().includes(first.jobId), 10_000, "first swap");
    // The concept child reported its progress as the swap the user knows about.
    expect(events.progress.filter((e) => e.progress.stage === "concept").map((e) => e.jobId)).toEqual([
      first.jobId,
      first.jobId,
    ]);
    const second = await client.enqueue("swap.edit", { ...swap, referenceBlobIds: [reference] });
    await until(() => completedIds().includes(second.jobId), 10_000, "second swap");
    expect(runs.filter((r) => r.startsWith("finish")).map((r) => r.split(" ")[1])).toEqual([
      "swap.concept",
      "swap.edit",
      "swap.edit",
    ]);
    expect(completedIds()).toEqual([first.jobId, second.jobId]);
  });

  it("answers a concept job from the cache of its own model only, without running the pipeline", async () => {
    await h.worker({ pipelines: lightweightPipelines({ steps: 2, onRun }) });
    // A client that does not know the model: every swap enqueues its concept job.
    const blind = await h.client({ model: undefined });
    const reference = await h.blobs.put(PHOTO2, { userId: "u1", kind: "image" });
    const swap = { userId: "u1", origin, sourceBlobId: photo, referenceBlobIds: [reference], subject: "cat" };
    const first = await blind.enqueue("swap.edit", swap);
    expect(first.position.state).toBe("waiting-for-concept");
    await until(() => completedIds().includes(first.jobId), 10_000, "first swap");
    const second = await blind.enqueue("swap.edit", swap);
    expect(second.position.state).toBe("waiting-for-concept");
    await until(() => completedIds().includes(second.jobId), 10_000, "second swap");
    expect(runs.filter((r) => r.startsWith("finish")).map((r) => r.split(" ")[1])).toEqual([
      "swap.concept",
      "swap.edit",
      "swap.edit",
    ]);
    // An engine on another model learns the concept again.
    await h.stopWorkers();
    await h.worker({ pipelines: lightweightPipelines({ steps: 2, onRun }), modelId: "another/model" });
    const third = await blind.enqueue("swap.edit", swap);
    await until(() => completedIds().includes(third.jobId), 10_000, "third swap");
    expect(runs.filter((r) => r.startsWith("finish swap.concept"))).toHaveLength(2);
  });
});
