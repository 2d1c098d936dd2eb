/**
 * `bench queue`: the queue without a GPU. N users enqueue jobs concurrently (each user one training
 * then renders, as the chat flow does) while W in-process workers run no-op pipelines (optionally
 * sleeping --job-ms). Reports enqueue latency (validation, blob checks, caps, BullMQ add, position),
 * throughput, and fairness: how evenly users are served. Runs on its own queue name, so it can point
 * at a live Redis (REDIS_URL) without touching the real queue; unset, it starts a private redis-server.
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Command } from "commander";
import { Redis } from "ioredis";
import { appConfig } from "../../config.js";
import { UserFacingError } from "../../errors.js";
import { logger } from "../../log.js";
import { BlobStore } from "../../queue/blobs.js";
import { QueueClient } from "../../queue/client.js";
import type { ChatOrigin, JobName } from "../../queue/jobs.js";
import { queueKeys } from "../../queue/keys.js";
import { startEmbeddedRedis } from "../../queue/redis-server.js";
import { type EngineWorker, type PipelineRegistry, startWorker } from "../../queue/worker.js";

interface Flags {
  jobs: string;
  users: string;
  workers: string;
  jobMs: string;
}

export function positiveInt(flag: string, value: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min)
    throw new UserFacingError(`${flag} must be a whole number ≥ ${min} (got "${value}")`);
  return n;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

/** Jain's fairness index of per-user values: 1 when all are equal, 1/n when one user gets everything. */
export function jainIndex(values: readonly number[]): number {
  const sum = values.reduce((a, b) => a + b, 0);
  const squares = values.reduce((a, b) => a + b * b, 0);
  return squares === 0 ? 1 : (sum * sum) / (values.length * squares);
}

/** Pipelines that do nothing (or sleep) and return a valid result pointing at one tiny blob. */
function noopPipelines(blobId: string, jobMs: number): PipelineRegistry {
  const wait = () => (jobMs > 0 ? new Promise((r) => setTimeout(r, jobMs)) : Promise.resolve());
  const images = [{ seed: 1, eta: 1, blobId }];
  return {
    "imagic.train": async () => {
      await wait();
      return { stateBlobId: blobId, images, gridBlobId: blobId };
    },
    "imagic.render": async () => {
      await wait();
      return { images, gridBlobId: blobId };
    },
  };
}

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

export function queueBenchCommand(): Command {
  return new Command("queue")
    .description("enqueue jobs from many users against no-op pipelines: enqueue p99, throughput, fairness")
    .option("--jobs <n>", "jobs in all", "200")
    .option("--users <n>", "users sending them (jobs / users each, at most USER_MAX_QUEUED_JOBS)", "50")
    .option("--workers <n>", "in-process workers (engines) taking jobs", "4")
    .option("--job-ms <ms>", "time each no-op job takes", "0")
    .action(async (f: Flags) => {
      const config = appConfig();
      // A log line per job would be a large part of what is measured: only warnings, unless asked.
      if (config.logLevel === "info") logger.level = "warn";
      const jobs = positiveInt("--jobs", f.jobs);
      const users = positiveInt("--users", f.users);
      const workerCount = positiveInt("--workers", f.workers);
      const jobMs = positiveInt("--job-ms", f.jobMs, 0);
      const perUser = Math.ceil(jobs / users);
      if (perUser > config.userMaxQueuedJobs) {
        throw new UserFacingError(
          `${jobs} jobs from ${users} users is ${perUser} per user, over USER_MAX_QUEUED_JOBS=${config.userMaxQueuedJobs}`,
        );
      }

      const dir = config.redisUrl ? undefined : await mkdtemp(path.join(os.tmpdir(), "bench-queue-"));
      const embedded = dir ? await startEmbeddedRedis({ dir }) : undefined;
      const redisUrl = config.redisUrl ?? (embedded?.url as string);
      const queueName = `bench-${Date.now()}`;
      const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
      const blobs = new BlobStore(redis, { ttlSeconds: 600, maxBytes: 1024 ** 2, userQuotaBytes: 0 });
      const client = new QueueClient({
        redisUrl,
        blobs,
        limits: { maxQueued: config.userMaxQueuedJobs },
        queueName,
      });
      const workers: EngineWorker[] = [];
      try {
        const input = await blobs.put(Buffer.from("bench input"), {
          userId: "bench",
          kind: "image",
          quota: false,
        });
        const finishedAt = new Map<string, { userId: string; latencyMs: number; at: number }>();
        let allDone: () => void = () => {};
        const done = new Promise<void>((resolve) => {
          allDone = resolve;
        });
        for (let w = 0; w < workerCount; w++) {
          const worker = await startWorker({
            redisUrl,
            blobs,
            pipelines: noopPipelines(input, jobMs),
            maxActivePerUser: config.userMaxActiveJobs,
            queueName,
            name: `bench-${w}`,
          });
          worker.worker.on("completed", (job) => {
            const userId = (job.data as { userId: string }).userId;
            const at = performance.now();
            finishedAt.set(String(job.id), {
              userId,
              latencyMs: (job.finishedOn ?? Date.now()) - job.timestamp,
              at,
            });
            if (finishedAt.size === jobs) allDone();
          });
          workers.push(worker);
        }
        const origin: ChatOrigin = { platform: "console", channel: "bench" };
        const enqueueMs: number[] = [];
        const started = performance.now();
        // Every user at once, each sending its jobs one after the other: a training, then renders.
        await Promise.all(
          Array.from({ length: users }, async (_, u) => {
            const mine = Math.min(perUser, jobs - u * perUser);
            for (let k = 0; k < mine; k++) {
              const userId = `bench-user-${u}`;
              const name: JobName = k === 0 ? "imagic.train" : "imagic.render";
              const payload =
                name === "imagic.train"
                  ? { userId, origin, imageBlobId: input, prompt: "a photo of a cat" }
                  : { userId, origin, stateBlobId: input, seeds: [k], etas: [1] };
              const t0 = performance.now();
              await client.enqueue(name, payload);
              enqueueMs.push(performance.now() - t0);
            }
          }),
        );
        const enqueued = performance.now();
        await done;
        const seconds = (performance.now() - started) / 1000;

        const sorted = [...enqueueMs].sort((a, b) => a - b);
        const byUser = new Map<string, { latencies: number[]; last: number }>();
        for (const { userId, latencyMs, at } of finishedAt.values()) {
          const entry = byUser.get(userId) ?? { latencies: [], last: 0 };
          entry.latencies.push(latencyMs);
          entry.last = Math.max(entry.last, (at - started) / 1000);
          byUser.set(userId, entry);
        }
        const means = [...byUser.values()].map(
          (e) => e.latencies.reduce((a, b) => a + b, 0) / e.latencies.length,
        );
        const lasts = [...byUser.values()].map((e) => e.last).sort((a, b) => a - b);
        const meansSorted = [...means].sort((a, b) => a - b);
        const where = config.redisUrl ? "REDIS_URL" : "embedded redis-server";
        const lines = [
          `queue bench: ${jobs} jobs from ${users} users (${perUser} each: 1 imagic.train, then imagic.render), ` +
            `${workerCount} workers, no-op pipelines (${jobMs} ms each), ${where}`,
          `enqueue latency: p50 ${fmt(percentile(sorted, 50))}, p99 ${fmt(percentile(sorted, 99))}, ` +
            `max ${fmt(sorted.at(-1) ?? 0)} (${users} users enqueueing concurrently; all enqueued in ` +
            `${((enqueued - started) / 1000).toFixed(2)} s)`,
          `throughput: ${jobs} jobs in ${seconds.toFixed(2)} s = ${(jobs / seconds).toFixed(0)} jobs/s ` +
            "(first enqueue to last completion)",
          `fairness: per-user mean wait+run ${fmt(meansSorted[0] ?? 0)} min, ` +
            `${fmt(percentile(meansSorted, 50))} median, ${fmt(meansSorted.at(-1) ?? 0)} max; ` +
            `Jain index ${jainIndex(means).toFixed(3)}; users' last job done between ` +
            `${(lasts[0] ?? 0).toFixed(2)} s and ${(lasts.at(-1) ?? 0).toFixed(2)} s`,
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      } finally {
        await Promise.all(workers.map((w) => w.close(0)));
        await client.queue.obliterate({ force: true });
        // The bench's own bookkeeping (caps, durations): SCAN, not KEYS, in case this is a live Redis.
        let cursor = "0";
        do {
          const [next, found] = await redis.scan(
            cursor,
            "MATCH",
            `${queueKeys(queueName).prefix}*`,
            "COUNT",
            1000,
          );
          if (found.length > 0) await redis.del(...found);
          cursor = next;
        } while (cursor !== "0");
        await client.close();
        redis.disconnect();
        await embedded?.stop();
        if (dir) await rm(dir, { recursive: true, force: true });
      }
    });
}
