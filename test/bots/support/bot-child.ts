// A chat bot in its own process, for the tests that SIGKILL it mid-post: the Discord or Slack bot
// (PLATFORM) on the fake at API_URL, with the queue side as `bot run` builds it, and short leases
// (DELIVERY_LEASE_MS for result deliveries, picks and pending commands, progress edits 1 s) so that a
// restarted bot takes over within seconds.
import { Redis } from "ioredis";
import { startDiscordBot } from "../../../src/bots/discord/bot.js";
import { startSlackBot } from "../../../src/bots/slack/bot.js";
import { BlobStore } from "../../../src/queue/blobs.js";
import { QueueClient } from "../../../src/queue/client.js";
import { BOT_BLOB_LIMITS } from "./bot-process.js";

const env = (name: string) => {
  const value = process.env[name];
  if (!value) throw new Error(`bot-child: ${name} is not set`);
  return value;
};
const platform = env("PLATFORM") as "discord" | "slack";
const redisUrl = env("REDIS_URL");
const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
const blobs = new BlobStore(redis, BOT_BLOB_LIMITS);
const queue = new QueueClient({
  redisUrl,
  blobs,
  limits: { maxQueued: 5 },
  consumer: platform,
  platform,
  deliveryLeaseMs: Number(env("DELIVERY_LEASE_MS")),
});
const lease = Number(env("DELIVERY_LEASE_MS"));
const commands = { progressLeaseMs: 1000, pickLeaseMs: lease, commandLeaseMs: lease };
if (platform === "discord") {
  await startDiscordBot({
    token: env("BOT_TOKEN"),
    apiUrl: env("API_URL"),
    queue,
    blobs,
    redis,
    limits: { minEditIntervalMs: 500 },
    commands,
  });
} else {
  await startSlackBot({
    botToken: env("BOT_TOKEN"),
    connection: { mode: "socket", appToken: env("APP_TOKEN") },
    apiUrl: env("API_URL"),
    queue,
    blobs,
    redis,
    limits: { minEditIntervalMs: 1000 },
    commands,
  });
}
process.stdout.write("ready\n");
