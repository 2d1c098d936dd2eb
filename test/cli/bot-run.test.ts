// `bot run` as operators run it, under a supervisor. When Discord closes the bot's gateway shard for
// good (4011 once the bot is in more servers than its shards may carry), discord.js never reconnects
// it: a process that stayed up would hear no command again. `bot run` exits 1 instead, saying why, so
// that the supervisor restarts it and the new process asks Discord for the shard count again.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeDiscord } from "../../src/bots/discord/fake/server.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";
import { tempDirs } from "../helpers/temp-dirs.js";
import { spawnCli, waitForLog } from "./run-cli.js";

const dir = tempDirs("bot-run-test-");
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

describe("photo-edit-bot bot run discord", () => {
  it("exits 1, naming the shard and the close code, when Discord closes its shard for good", async () => {
    const child = spawnCli(["bot", "run", "discord"], {
      STATE_DIR: dir(),
      REDIS_URL: redis.url,
      DISCORD_TOKEN: fake.token,
      DISCORD_API_URL: fake.apiUrl,
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    try {
      await waitForLog(child, "Discord bot ready");
      fake.closeShard(0, 4011);
      expect(await exited).toBe(1);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    expect(stderr.trim().split("\n").at(-1)).toMatch(
      /^Discord closed gateway shard 0 for good \(4011, sharding required: .*\); the bot no longer hears commands\. Restart it/,
    );
    expect(fake.connectedBots).toBe(0);
  });
});
