import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { runServices, type Service } from "../src/services.js";
import { alive } from "./helpers/processes.js";
import { tempDirs } from "./helpers/temp-dirs.js";

const tempDir = tempDirs("services-test-");
function config() {
  return loadConfig({ STATE_DIR: tempDir(), ENGINE_HTTP_PORT: "0" }, { envFile: false });
}

/** A service that records its start (with the Redis it was given) and stop in `events`. */
function recorder(name: string, events: string[], redisUrls: string[] = []): Service {
  return {
    name,
    async start(context) {
      redisUrls.push(context.redisUrl);
      events.push(`start ${name}`);
      return {
        async stop() {
          events.push(`stop ${name}`);
        },
      };
    },
  };
}

/** pid of the redis-server at `url`, or 0 when nothing answers there. */
async function redisPid(url: string): Promise<number> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  try {
    await client.connect();
    return Number(/process_id:(\d+)/.exec(await client.info("server"))?.[1]);
  } catch {
    return 0;
  } finally {
    client.disconnect();
  }
}

describe("runServices", () => {
  it("starts services in order on one Redis and stops them in reverse on SIGTERM, Redis last", async () => {
    const events: string[] = [];
    const urls: string[] = [];
    const run = runServices(config(), [recorder("engine", events, urls), recorder("bot", events, urls)]);
    while (events.length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(urls[0]).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    expect(urls[1]).toBe(urls[0]);
    const pid = await redisPid(urls[0] ?? "");

    process.emit("SIGTERM", "SIGTERM");
    await run;
    expect(events).toEqual(["start engine", "start bot", "stop bot", "stop engine"]);
    expect(alive(pid)).toBe(false);
  });

  it("stops what had started, Redis included, when a service fails to start", async () => {
    const events: string[] = [];
    const urls: string[] = [];
    const broken: Service = {
      name: "bot",
      async start() {
        throw new Error("gateway refused the token");
      },
    };
    await expect(runServices(config(), [recorder("engine", events, urls), broken])).rejects.toThrow(
      "gateway refused the token",
    );
    expect(events).toEqual(["start engine", "stop engine"]);
    expect(await redisPid(urls[0] ?? "")).toBe(0);
  });

  it("aborts a start still in progress on SIGTERM (a model download) and stops cleanly", async () => {
    const events: string[] = [];
    const loading: Service = {
      name: "engine",
      async start({ signal }) {
        events.push("start engine");
        await new Promise((_, reject) => signal?.addEventListener("abort", () => reject(signal.reason)));
        throw new Error("unreachable");
      },
    };
    const run = runServices(config(), [recorder("bot", events), loading]);
    while (events.length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
    process.emit("SIGTERM", "SIGTERM");
    await run;
    expect(events).toEqual(["start bot", "start engine", "stop bot"]);
  });

  it("refuses a busy port before starting anything", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, resolve));
    const { port } = blocker.address() as net.AddressInfo;
    const events: string[] = [];
    const cfg = config();
    try {
      await expect(
        runServices(cfg, [recorder("engine", events)], { ports: [[port, "ENGINE_HTTP_PORT"]] }),
      ).rejects.toThrow(`ENGINE_HTTP_PORT=${port}: port ${port} is already in use`);
    } finally {
      blocker.close();
    }
    expect(events).toEqual([]);
    expect(existsSync(path.join(cfg.stateDir, "redis"))).toBe(false);
  });

  it("stops the services and fails when the embedded Redis cannot be kept up", async () => {
    const events: string[] = [];
    const urls: string[] = [];
    const run = runServices(config(), [recorder("engine", events, urls)]);
    const outcome = run.then(
      () => "resolved",
      (error: Error) => error.message,
    );
    while (events.length < 1) await new Promise((resolve) => setTimeout(resolve, 20));
    let settled = false;
    void outcome.then(() => {
      settled = true;
    });
    // Kill each incarnation as soon as it serves, until the supervisor's budget (5 restarts a minute) is spent.
    while (!settled) {
      const pid = await redisPid(urls[0] ?? "");
      if (pid) process.kill(pid, "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(await outcome).toBe(
      "Embedded Redis is down: redis-server crashed 6 times within a minute; giving up",
    );
    expect(events).toEqual(["start engine", "stop engine"]);
  });

  it("stops everything and fails with the reason when a running service fails for good", async () => {
    const events: string[] = [];
    let fail: (error: Error) => void = () => {};
    const failing: Service = {
      name: "bot",
      async start() {
        events.push("start bot");
        return {
          failed: new Promise<Error>((resolve) => {
            fail = resolve;
          }),
          async stop() {
            events.push("stop bot");
          },
        };
      },
    };
    const run = runServices(config(), [recorder("engine", events), failing]);
    while (events.length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
    fail(new Error("Discord closed gateway shard 0 for good (4011)"));
    await expect(run).rejects.toThrow("Discord closed gateway shard 0 for good (4011)");
    expect(events).toEqual(["start engine", "start bot", "stop bot", "stop engine"]);
  });
});
