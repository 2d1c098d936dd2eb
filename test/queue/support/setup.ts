// Shared wiring of the queue tests: a private Redis, a blob store, a client and workers on it.
import { readFileSync } from "node:fs";
import { type BlobLimits, BlobStore } from "../../../src/queue/blobs.js";
import { QueueClient, type QueueClientOptions } from "../../../src/queue/client.js";
import type { ChatOrigin } from "../../../src/queue/jobs.js";
import { type EngineWorker, type StartWorkerOptions, startWorker } from "../../../src/queue/worker.js";
import { startTestRedis, type TestRedis } from "../../helpers/redis.js";

export const PHOTO = readFileSync(new URL("../../fixtures/images/chelsea.png", import.meta.url));
export const PHOTO2 = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));

export const origin: ChatOrigin = { platform: "discord", channel: "c1", thread: "t1" };

export const LIMITS: BlobLimits = {
  ttlSeconds: 3600,
  maxBytes: 1024 * 1024,
  userQuotaBytes: 4 * 1024 * 1024,
};

/** Worker timings short enough for a test to see stalls, cancels and previews in a second or two. */
export const FAST: Pick<
  StartWorkerOptions,
  "lockDurationMs" | "stalledIntervalMs" | "cancelPollMs" | "progressIntervalMs"
> = {
  lockDurationMs: 1_000,
  stalledIntervalMs: 500,
  cancelPollMs: 50,
  progressIntervalMs: 0,
};

export interface Harness {
  redis: TestRedis;
  blobs: BlobStore;
  client(options?: Partial<QueueClientOptions>): Promise<QueueClient>;
  worker(
    options: Omit<StartWorkerOptions, "redisUrl" | "blobs" | "maxActivePerUser"> & {
      maxActivePerUser?: number;
    },
  ): Promise<EngineWorker>;
  /** Closes every worker started so far (each test of a file starts its own). */
  stopWorkers(): Promise<void>;
  close(): Promise<void>;
}

/** The model the harness's clients and workers say they serve (concepts are cached per model). */
export const TEST_MODEL = "test/model";

export async function harness(limits: BlobLimits = LIMITS): Promise<Harness> {
  const redis = await startTestRedis();
  const blobs = new BlobStore(redis.client(), limits);
  const closers: Array<() => Promise<void>> = [];
  let workers: EngineWorker[] = [];
  const stopWorkers = async () => {
    await Promise.all(workers.map((w) => w.close(0)));
    workers = [];
  };
  return {
    redis,
    blobs,
    async client(options = {}) {
      const client = new QueueClient({
        redisUrl: redis.url,
        blobs,
        limits: { maxQueued: 5 },
        retry: { attempts: 2, backoffMs: 50 },
        model: TEST_MODEL,
        ...options,
      });
      closers.push(() => client.close());
      return client;
    },
    async worker(options) {
      const worker = await startWorker({
        redisUrl: redis.url,
        blobs,
        maxActivePerUser: 2,
        ...FAST,
        modelId: TEST_MODEL,
        ...options,
      });
      workers.push(worker);
      return worker;
    },
    stopWorkers,
    async close() {
      await stopWorkers();
      for (const close of closers.reverse()) await close();
      await redis.stop();
    },
  };
}

/** Resolves when `predicate` holds (polled), or rejects after `ms`. */
export async function until(
  predicate: () => boolean | Promise<boolean>,
  ms = 10_000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A loopback TCP port that was free a moment ago (for ENGINE_HTTP_PORT in tests). */
export { freePort } from "../../../src/queue/redis-server.js";
