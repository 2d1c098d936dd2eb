// The Slack bot as a service of `start` and `bot run`: its own Redis connection, blob store and queue
// client (consumer "slack": events resume after a restart, results are posted once).
import { Redis } from "ioredis";
import { type Config, requireSetting } from "../../config.js";
import { BlobStore } from "../../queue/blobs.js";
import { QueueClient } from "../../queue/client.js";
import type { Service } from "../../services.js";
import { blobLimits } from "../discord/service.js";
import { type SlackConnection, startSlackBot } from "./bot.js";

/** True when any Slack setting is given: then every one the chosen mode needs must be. */
export const slackConfigured = (config: Config) =>
  config.slackBotToken !== undefined ||
  config.slackAppToken !== undefined ||
  config.slackSigningSecret !== undefined;

/** The settings the mode needs; throws a ConfigError naming the first one missing. */
export function slackSettings(config: Config): { botToken: string; connection: SlackConnection } {
  const purpose = `the Slack bot (SLACK_MODE=${config.slackMode})`;
  const botToken = requireSetting(config, "slackBotToken", purpose).reveal();
  if (config.slackMode === "socket") {
    return {
      botToken,
      connection: { mode: "socket", appToken: requireSetting(config, "slackAppToken", purpose).reveal() },
    };
  }
  const signingSecret = requireSetting(config, "slackSigningSecret", purpose).reveal();
  return { botToken, connection: { mode: "http", signingSecret, port: config.slackHttpPort } };
}

/**
 * `required`: `bot run slack` needs the Slack settings; `start` runs the bot only when some are set (and then
 * says which one is missing).
 */
export function slackService(options: { required: boolean }): Service {
  return {
    name: "slack",
    async start({ config, redisUrl, log }) {
      if (!slackConfigured(config) && !options.required) {
        log.info("SLACK_BOT_TOKEN is unset: the Slack bot does not run");
        return { stop: async () => {} };
      }
      const settings = slackSettings(config);
      const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
      const blobs = new BlobStore(redis, blobLimits(config));
      const queue = new QueueClient({
        redisUrl,
        blobs,
        limits: { maxQueued: config.userMaxQueuedJobs },
        consumer: "slack",
        platform: "slack",
      });
      try {
        const bot = await startSlackBot({ ...settings, apiUrl: config.slackApiUrl, queue, blobs, redis });
        return {
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
