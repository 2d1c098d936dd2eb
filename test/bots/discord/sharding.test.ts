// One gateway connection may carry only so many servers (Discord: 2,500); past that Discord closes it
// with 4011 and discord.js gives up on it for good. Here a shard may carry one server and the bot is in
// three: it connects as many shards as Discord recommends, hears each server on its own shard, and
// when Discord closes a shard for good it says so and settles `failed`, so the process can exit.
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ALL_BOT_PERMISSIONS } from "../../../src/bots/discord/fake/server.js";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world({ fake: { maxGuildsPerShard: 1, guildsPerRecommendedShard: 1, maxConcurrency: 16 } });
  w.fake.addGuild("second");
  w.fake.addGuild("third");
});
afterAll(() => w.close());

describe("sharding", () => {
  it("connects the shards Discord recommends and answers in every server", async () => {
    // A bot that does not shard is closed with 4011 and never becomes ready.
    await Promise.race([
      w.startBot(),
      sleep(15_000).then(() => Promise.reject(new Error("the bot did not become ready"))),
    ]);
    // Three servers, one per shard at most: at least three shards, each identified once.
    const count = w.fake.recommendedShards();
    expect(count).toBeGreaterThanOrEqual(3);
    const shards = w.fake.identifies.map((i) => i.shard?.join("/")).sort();
    expect(shards).toEqual(Array.from({ length: count }, (_, i) => `${i}/${count}`).sort());
    expect(w.fake.closes).toEqual([]);
    for (const guildId of w.fake.guilds.keys()) {
      const channel = w.fake.addTextChannel("help", ALL_BOT_PERMISSIONS, guildId);
      const help = w.fake.runCommand({ name: "help", user: w.author, channel });
      expect(await w.ephemeral(help)).toContain("/imagic image:<photo>");
    }
  });

  it("settles `failed` naming the shard and the code when Discord closes one for good", async () => {
    w.fake.closeShard(1, 4011);
    const error = await w.bot.failed;
    expect(error.message).toMatch(
      /^Discord closed gateway shard 1 for good \(4011, sharding required: .*\); the bot no longer hears commands\. Restart it/,
    );
  });
});
