// The Discord bot as `start` and `bot run` run it: from settings, against a Redis URL.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeDiscord } from "../../../src/bots/discord/fake/server.js";
import { discordService } from "../../../src/bots/discord/service.js";
import { loadConfig } from "../../../src/config.js";
import { childLogger } from "../../../src/log.js";
import { startTestRedis, type TestRedis } from "../../helpers/redis.js";
import { opt, PHOTO } from "./support.js";

let fake: FakeDiscord;
let redis: TestRedis;
beforeAll(async () => {
  fake = await FakeDiscord.start();
  redis = await startTestRedis();
});
afterAll(async () => {
  await redis.stop();
  await fake.close();
});

const context = (env: Record<string, string>) => ({
  config: loadConfig({ STATE_DIR: "/tmp/discord-service-test", ...env }),
  redisUrl: redis.url,
  log: childLogger("test"),
});

describe("discordService", () => {
  it("connects with DISCORD_TOKEN and DISCORD_API_URL, answers a command, and stops cleanly", async () => {
    const service = await discordService({ required: true }).start(
      context({ DISCORD_TOKEN: fake.token, DISCORD_API_URL: fake.apiUrl }),
    );
    try {
      expect(fake.connectedBots).toBe(1);
      const interaction = fake.runCommand({
        name: "help",
        user: fake.user("ann"),
        channel: fake.addTextChannel("c"),
      });
      await fake.waitFor("the /help answer", () => interaction.originalId);
    } finally {
      await service.stop();
    }
    await fake.waitFor("the gateway connection to close", () => fake.connectedBots === 0);
  });

  it("measures an /imagic prompt with the model's tokenizer before queuing: one CLIP would cut is refused at once", async () => {
    const service = await discordService({ required: true }).start(
      context({ DISCORD_TOKEN: fake.token, DISCORD_API_URL: fake.apiUrl }),
    );
    try {
      const image = fake.attachment("photo.png", PHOTO, "image/png");
      const long = Array.from({ length: 90 }, (_, i) => ["red", "cat", "big", "dog"][i % 4]).join(" ");
      const interaction = fake.runCommand({
        name: "imagic",
        user: fake.user("ann"),
        channel: fake.addTextChannel("long-prompt"),
        options: [opt.attachment("image", image), opt.string("prompt", long)],
        attachments: [image],
      });
      const answer = await fake.waitFor("the refusal", () =>
        interaction.originalId ? fake.messages.get(interaction.originalId)?.content : undefined,
      );
      expect(answer).toMatch(/^⚠️ `prompt` is longer than the 75 tokens CLIP reads/);
    } finally {
      await service.stop();
    }
  });

  it("reports a shard Discord closed for good, so that `start` and `bot run` exit", async () => {
    const service = await discordService({ required: true }).start(
      context({ DISCORD_TOKEN: fake.token, DISCORD_API_URL: fake.apiUrl }),
    );
    try {
      fake.closeShard(0, 4011);
      expect((await service.failed)?.message).toMatch(/shard 0 for good \(4011, sharding required/);
    } finally {
      await service.stop();
    }
  });

  it("does nothing in `start` without DISCORD_TOKEN, and `bot run` says what is missing", async () => {
    const idle = await discordService({ required: false }).start(context({}));
    await idle.stop();
    expect(fake.connectedBots).toBe(0);
    await expect(discordService({ required: true }).start(context({}))).rejects.toThrow(
      "DISCORD_TOKEN is required for the Discord bot",
    );
  });
});
