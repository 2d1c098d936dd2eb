import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { runServices, type Service } from "../src/services.js";

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
function config() {
  const dir = mkdtempSync(path.join(tmpdir(), "services-test-"));
  dirs.push(dir);
  return loadConfig({ STATE_DIR: dir, ENGINE_HTTP_PORT: "0" }, { envFile: false });
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

/** pid of the embedded redis-server serving `url` (it is our grandchild: look it up by port). */
async function redisPid(url: string): Promise<number> {
  const { Redis } = await import("ioredis");
  const client = new Redis(url);
  try {
    return Number(/process_id:(\d+)/.exec(await client.info("server"))?.[1]);
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
    const { Redis } = await import("ioredis");
    const client = new Redis(urls[0] ?? "", { lazyConnect: true, retryStrategy: () => null });
    client.on("error", () => {});
    await expect(client.connect()).rejects.toThrow();
  });
});
