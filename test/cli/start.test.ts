import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FakeSlack } from "../bots/slack/fake/server.js";
import { alive } from "../helpers/processes.js";
import { tempDirs } from "../helpers/temp-dirs.js";
import { runCli, spawnCli, waitForLog } from "./run-cli.js";

const stateDir = tempDirs("start-test-");

describe("photo-edit-bot start", () => {
  // A supervisor sends SIGTERM to the process; a terminal's Ctrl-C sends SIGINT to the whole process
  // group of `npm start`, where tsx relays it once more: one stop, not a forced exit.
  it.each([
    ["SIGTERM to the process", false],
    ["Ctrl-C (SIGINT to the group, through tsx)", true],
  ])("runs embedded Redis until %s, then exits 0 leaving nothing", async (_, ctrlC) => {
    const dir = stateDir();
    const child = spawnCli(
      ["start"],
      { STATE_DIR: dir, ENGINE_HTTP_PORT: "0", REDIS_URL: "" },
      { tsxCli: ctrlC },
    );
    const redisReady = waitForLog(child, "embedded redis-server ready");
    const ready = waitForLog(child, "ready");
    const { redisPid, url } = await redisReady;
    await ready;
    expect(url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    expect(alive(Number(redisPid))).toBe(true);
    expect(existsSync(path.join(dir, "redis", "appendonlydir"))).toBe(true);

    const stopped = waitForLog(child, "stopped cleanly");
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    if (ctrlC) process.kill(-(child.pid ?? 0), "SIGINT");
    else child.kill("SIGTERM");
    await stopped;
    // Our process exits 0; tsx's CLI in front of it may report a relayed Ctrl-C as 128 + SIGINT.
    expect(ctrlC ? [0, 130] : [0]).toContain(await exited);
    expect(alive(Number(redisPid))).toBe(false);
  });

  it("refuses a busy ENGINE_HTTP_PORT in one line before starting anything", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, resolve));
    const { port } = blocker.address() as net.AddressInfo;
    const dir = stateDir();
    try {
      const { code, stderr } = await runCli(["start"], { STATE_DIR: dir, ENGINE_HTTP_PORT: String(port) });
      expect(code).toBe(1);
      expect(stderr.trim().split("\n").at(-1)).toBe(
        `ENGINE_HTTP_PORT=${port}: port ${port} is already in use; stop what holds it or choose another port (0 disables it)`,
      );
      expect(existsSync(path.join(dir, "redis"))).toBe(false);
    } finally {
      blocker.close();
    }
  });

  it("says how to install redis-server when it is missing", async () => {
    const dir = stateDir();
    const { code, stderr } = await runCli(["start"], { STATE_DIR: dir, ENGINE_HTTP_PORT: "0", PATH: dir });
    expect(code).toBe(1);
    expect(stderr.trim().split("\n").at(-1)).toBe(
      "redis-server was not found on PATH: install it (Debian/Ubuntu: sudo apt-get install -y redis-server) " +
        "or set REDIS_URL to an existing Redis",
    );
  });

  it("names an unreachable REDIS_URL in one line", async () => {
    const { code, stderr } = await runCli(["start"], {
      STATE_DIR: stateDir(),
      ENGINE_HTTP_PORT: "0",
      REDIS_URL: "redis://127.0.0.1:1",
    });
    expect(code).toBe(1);
    expect(stderr.trim().split("\n").at(-1)).toMatch(
      /^Cannot reach Redis at redis:\/\/127\.0\.0\.1:1 \(REDIS_URL\): .*ECONNREFUSED/,
    );
  });

  it("runs the Slack bot when its tokens are set, and stops it with the rest", async () => {
    const fake = await FakeSlack.start();
    try {
      const child = spawnCli(["start"], {
        STATE_DIR: stateDir(),
        ENGINE_HTTP_PORT: "0",
        REDIS_URL: "",
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_APP_TOKEN: fake.appToken,
        SLACK_API_URL: fake.apiUrl,
      });
      const plan = await waitForLog(child, "plan");
      expect(plan.slack).toBe("settings set, socket mode");
      await waitForLog(child, "Slack bot ready");
      expect(fake.deliveries.connected).toBe(1);
      const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      await fake.waitFor("the Socket Mode connection to close", () => fake.deliveries.connected === 0);
    } finally {
      await fake.close();
    }
  });

  it("names the Slack setting its mode is missing, in one line, before starting anything", async () => {
    const dir = stateDir();
    const { code, stderr } = await runCli(["start"], {
      STATE_DIR: dir,
      ENGINE_HTTP_PORT: "0",
      SLACK_BOT_TOKEN: "xoxb-only-the-bot-token",
    });
    expect(code).toBe(1);
    expect(stderr.trim().split("\n").at(-1)).toBe(
      "SLACK_APP_TOKEN is required for the Slack bot (SLACK_MODE=socket): set it in the environment or .env",
    );
    expect(stderr).not.toContain("xoxb-only-the-bot-token");
    expect(existsSync(path.join(dir, "redis"))).toBe(false);
  });
});
