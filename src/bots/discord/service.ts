// The Discord bot as a service of `start` and `bot run`: its own Redis connection, blob store and
// queue client (consumer "discord": events resume after a restart, results are posted once).
import { Redis } from "ioredis";
import { type Config, requireSetting } from "../../config.js";
import { type BlobLimits, BlobStore } from "../../queue/blobs.js";
import { QueueClient } from "../../queue/client.js";
import type { Service } from "../../services.js";
import { MAX_REFERENCES } from "../../spec/swap.js";
import { startDiscordBot } from "./bot.js";

/** Blob limits from the settings: one user may hold the inputs of one full /swap at a time. */
export function blobLimits(config: Pick<Config, "blobTtlSeconds" | "blobMaxBytes">): BlobLimits {
  return {
    ttlSeconds: config.blobTtlSeconds,
    maxBytes: config.blobMaxBytes,
    userQuotaBytes: config.blobMaxBytes * (1 + MAX_REFERENCES),
  };
}

/**
 * `required`: `bot run` needs DISCORD_TOKEN; `start` runs the bot only when it is set.
 */
export function discordService(options: { required: boolean }): Service {
  return {
    name: "discord",
    async start({ config, redisUrl, log }) {
      if (!config.discordToken && !options.required) {
        log.info("DISCORD_TOKEN is unset: the Discord bot does not run");
        return { stop: async () => {} };
      }
      const token = requireSetting(config, "discordToken", "the Discord bot").reveal();
      const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
      const blobs = new BlobStore(redis, blobLimits(config));
      const queue = new QueueClient({
        redisUrl,
        blobs,
        limits: { maxQueued: config.userMaxQueuedJobs },
        consumer: "discord",
        platform: "discord",
      });
      try {
        const bot = await startDiscordBot({ token, apiUrl: config.discordApiUrl, queue, blobs, redis });
        return {
          failed: bot.failed,
          async stop() {
            await bot.stop();
            await queue.close();
            redis.disconnect();
          },
        };
      } catch (error) {
        await queue.close();
        redis.disconnect();
        throw error;
      }
    },
  };
}
