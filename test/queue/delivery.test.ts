// Delivery of finished jobs to a named consumer is at-least-once and confirmed: a result whose delivering
// process died (its claim taken, never confirmed — what a SIGKILL leaves) is delivered again, marked as a
// redelivery, by any process of the consumer once the lease runs out; a live delivery is left alone, and a
// confirmed one is never delivered again. A result whose listener can deliver it only later (its chat
// platform down: DeliverLaterError) is delivered again, after growing delays, until it is taken or the tries
// run out.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { QueueClient, QueueClientEvents } from "../../src/queue/client.js";
import { DeliverLaterError, DeliveryClaims } from "../../src/queue/delivery.js";
import { queueKeys } from "../../src/queue/keys.js";
import { lightweightPipelines } from "./support/pipelines.js";
import { type Harness, harness, origin, PHOTO, until } from "./support/setup.js";

type Completed = QueueClientEvents["completed"][0];
const LEASE_MS = 300;
let h: Harness;
let photo: string;
beforeAll(async () => {
  h = await harness();
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
  await h.worker({ pipelines: lightweightPipelines({ steps: 1, stepMs: 1 }) });
});
afterAll(() => h.close());

/** A job run to completion, with nobody of `consumer` listening. */
async function completedJob(): Promise<{ jobId: string; createdAt: string }> {
  const client = await h.client();
  const { jobId } = await client.enqueue("imagic.train", {
    userId: "u1",
    origin,
    imageBlobId: photo,
    prompt: "a dog",
  });
  await until(async () => (await client.queue.getJobState(jobId)) === "completed", 10_000, "completion");
  const job = await client.queue.getJob(jobId);
  return { jobId, createdAt: String(job?.timestamp) };
}

/** A process of `consumer` whose listener records what it was given, settling when `settle` says. */
async function listener(consumer: string, settle: () => Promise<void> = async () => {}) {
  const client: QueueClient = await h.client({ consumer, deliveryLeaseMs: LEASE_MS });
  const completed: Completed[] = [];
  client.events.on("completed", (event) => {
    completed.push(event);
    return settle();
  });
  await client.listen();
  return { client, completed };
}

describe("result delivery", () => {
  it("delivers a result whose handling Redis refused (out of memory) once Redis takes writes again", async () => {
    const bot = await listener("oom-bot");
    const first = await completedJob();
    await until(() => bot.completed.length === 1, 5_000, "the first delivery");
    await bot.client.unlisten();
    const missed = await completedJob();
    // Redis at its maxmemory (noeviction) refuses writes: the bot cannot take the delivery's claim.
    await h.stopWorkers();
    const redis = h.redis.client();
    const refusals = async () =>
      Number(/errorstat_OOM:count=(\d+)/.exec(await redis.info("errorstats"))?.[1] ?? 0);
    const before = await refusals();
    await redis.config("SET", "maxmemory", "1");
    try {
      await bot.client.listen();
      await until(async () => (await refusals()) > before, 5_000, "the claim refused by Redis");
    } finally {
      await redis.config("SET", "maxmemory", "0");
    }
    await h.worker({ pipelines: lightweightPipelines({ steps: 1, stepMs: 1 }) });
    const next = await completedJob();
    await until(() => bot.completed.some((e) => e.jobId === next.jobId), 10_000, "the next delivery");
    expect(bot.completed.map((e) => e.jobId)).toEqual([first.jobId, missed.jobId, next.jobId]);
  });

  it("goes on past an event whose listener throws: only what Redis failed is tried again", async () => {
    const bot = await listener("throwing-bot");
    bot.client.events.on("progress", () => {
      throw new Error("a listener's bug");
    });
    const job = await completedJob();
    await until(() => bot.completed.length > 0, 5_000, "the result behind the failing progress events");
    expect(bot.completed.map((e) => e.jobId)).toEqual([job.jobId]);
  });

  it("delivers again, once, a result whose delivering process died before confirming it", async () => {
    const job = await completedJob();
    // What a process SIGKILLed mid-post leaves: the claim taken, never confirmed nor renewed.
    const dead = new DeliveryClaims(h.redis.client(), queueKeys(), "bot", LEASE_MS);
    expect(await dead.take(job)).toBe("first");

    const alive = await listener("bot");
    await until(() => alive.completed.length > 0, 5_000, "the redelivery");
    expect(alive.completed.map((e) => [e.jobId, e.redelivery])).toEqual([[job.jobId, true]]);
    // Confirmed: neither this process nor a later one delivers it again.
    await until(async () => (await dead.abandoned()).length === 0, 5_000, "the confirmation");
    const later = await listener("bot");
    await new Promise((resolve) => setTimeout(resolve, 3 * LEASE_MS));
    expect(alive.completed).toHaveLength(1);
    expect(later.completed).toEqual([]);
    expect(await dead.take(job)).toBeUndefined();
  });

  it("leaves a delivery under way alone while its process renews the lease", async () => {
    let finish = () => {};
    // One promise for every delivery, so that the later tests' results do not hold this process's close.
    const held = new Promise<void>((resolve) => (finish = resolve));
    const slow = await listener("slow-bot", () => held);
    const job = await completedJob();
    await until(() => slow.completed.length > 0, 5_000, "the delivery");
    const other = await listener("slow-bot");
    // Many leases long: the holder keeps renewing, so nobody delivers it again.
    await new Promise((resolve) => setTimeout(resolve, 5 * LEASE_MS));
    expect(slow.completed.map((e) => [e.jobId, e.redelivery])).toEqual([[job.jobId, false]]);
    expect(other.completed).toEqual([]);
    finish();
  });
});

describe("a result its listener can deliver only later", () => {
  const RETRY = { firstDelayMs: 50, maxDelayMs: 200, tries: 3 };

  /** A process of `consumer` whose listener fails for now (DeliverLaterError) the first `failing` tries. */
  async function outage(consumer: string, failing: number) {
    const client = await h.client({ consumer, deliveryLeaseMs: LEASE_MS, deliveryRetry: RETRY });
    const claim = (jobId: string, createdAt: string) =>
      h.redis.client().get(queueKeys().delivered(`${consumer}:${jobId}:${createdAt}`));
    const tries: Array<{ jobId: string; redelivery: boolean; claim: string | null }> = [];
    client.events.on("completed", async (event) => {
      const createdAt = String((await client.queue.getJob(event.jobId))?.timestamp);
      tries.push({
        jobId: event.jobId,
        redelivery: event.redelivery,
        claim: await claim(event.jobId, createdAt),
      });
      if (tries.length <= failing) throw new DeliverLaterError("the chat platform is down");
    });
    await client.listen();
    return { tries, claim };
  }

  it("is delivered again, as a redelivery, until the listener takes it, and confirmed only then", async () => {
    const bot = await outage("outage-bot", 2);
    const job = await completedJob();
    await until(
      async () => (await bot.claim(job.jobId, job.createdAt)) === "done",
      10_000,
      "the confirmation",
    );
    // Each try found the claim still pending: no try before the last one confirmed it.
    expect(bot.tries.map((t) => [t.jobId, t.redelivery, t.claim?.startsWith("pending:")])).toEqual([
      [job.jobId, false, true],
      [job.jobId, true, true],
      [job.jobId, true, true],
    ]);
  });

  it("is given up once its tries are used up", async () => {
    const bot = await outage("down-bot", Number.POSITIVE_INFINITY);
    const job = await completedJob();
    await until(async () => (await bot.claim(job.jobId, job.createdAt)) === "done", 10_000, "giving up");
    expect(bot.tries.map((t) => t.redelivery)).toEqual([false, true, true]);
  });
});
