// What every chat bot holds on the queue side, whatever its platform: its own Redis connection, a blob
// store and a queue client whose consumer is the platform (events resume after a restart, each result is
// posted once, and only this platform's jobs are reported to it).
import { Redis } from "ioredis";
import type { Config } from "../config.js";
import { childLogger } from "../log.js";
import { type BlobLimits, BlobStore } from "../queue/blobs.js";
import { QueueClient } from "../queue/client.js";
import type { ChatOrigin } from "../queue/jobs.js";
import type { RunningService } from "../services.js";
import { configuredModelIdentity } from "../spec/model.js";
import { MAX_REFERENCES } from "../spec/swap.js";

/** Blob limits from the settings: one user may hold the inputs of one full /swap at a time. */
export function blobLimits(config: Pick<Config, "blobTtlSeconds" | "blobMaxBytes">): BlobLimits {
  return {
    ttlSeconds: config.blobTtlSeconds,
    maxBytes: config.blobMaxBytes,
    userQuotaBytes: config.blobMaxBytes * (1 + MAX_REFERENCES),
  };
}

export interface QueueSide {
  redis: Redis;
  blobs: BlobStore;
  queue: QueueClient;
}

/**
 * Connects the queue side of `platform`'s bot and starts the bot on it; stopping the bot (or a failed
 * start) closes the connections again.
 */
const log = childLogger("queue-side");

export async function startOnQueue(
  platform: ChatOrigin["platform"],
  config: Config,
  redisUrl: string,
  startBot: (side: QueueSide) => Promise<Pick<RunningService, "stop" | "failed">>,
): Promise<RunningService> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  // It reconnects by itself (commands wait meanwhile); unheard, ioredis prints every failed attempt as
  // an "Unhandled error event" with its stack (the chaos run's Redis restarts showed it).
  redis.on("error", (err) => log.warn({ err: err.message }, "redis connection error (reconnecting)"));
  const blobs = new BlobStore(redis, blobLimits(config));
  const queue = new QueueClient({
    redisUrl,
    blobs,
    limits: { maxQueued: config.userMaxQueuedJobs },
    consumer: platform,
    platform,
    model: configuredModelIdentity(config),
  });
  const close = async () => {
    await queue.close();
    redis.disconnect();
  };
  try {
    const bot = await startBot({ redis, blobs, queue });
    return {
      ...(bot.failed ? { failed: bot.failed } : {}),
      async stop() {
        await bot.stop();
        await close();
      },
    };
  } catch (error) {
    await close();
    throw error;
  }
}
