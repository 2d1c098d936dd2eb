import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { Redis } from "ioredis";
import { afterEach, describe, expect, it } from "vitest";
import { UserFacingError } from "../../src/errors.js";
import { type EmbeddedRedis, resolveRedis, startEmbeddedRedis } from "../../src/queue/redis-server.js";
import { alive } from "../helpers/processes.js";
import { tempDirs } from "../helpers/temp-dirs.js";

async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return check();
}

// Before the afterEach below, which then stops the servers before their folders are removed.
const tempDir = tempDirs("redis-test-");
const servers: EmbeddedRedis[] = [];
const clients: Redis[] = [];
async function start(dir = tempDir()): Promise<EmbeddedRedis> {
  const server = await startEmbeddedRedis({ dir });
  servers.push(server);
  return server;
}
function connect(url: string): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 3 });
  client.on("error", () => {}); // refused connections while the server restarts; commands retry
  clients.push(client);
  return client;
}

afterEach(async () => {
  for (const client of clients.splice(0)) client.disconnect();
  for (const server of servers.splice(0)) await server.stop();
});

describe("embedded redis-server", () => {
  it("serves on loopback with an append-only file in its folder, and stop() ends it", async () => {
    const dir = tempDir();
    const server = await start(dir);
    expect(server.url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    const client = connect(server.url);
    await client.set("greeting", "hello");
    expect(await client.get("greeting")).toBe("hello");
    expect(await client.config("GET", "appendonly")).toEqual(["appendonly", "yes"]);
    expect(existsSync(path.join(dir, "appendonlydir"))).toBe(true);
    client.disconnect();

    const pid = server.pid;
    expect(alive(pid)).toBe(true);
    await server.stop();
    expect(await waitFor(() => !alive(pid), 5000)).toBe(true);
  });

  it("restarts after SIGKILL on the same port, with the data", async () => {
    const server = await start();
    const client = connect(server.url);
    await client.set("kept", "across crashes");
    const crashed = new Promise((resolve) => server.once("crash", resolve));
    const restarted = new Promise<{ pid: number }>((resolve) => server.once("restart", resolve));
    const before = server.pid;

    process.kill(before, "SIGKILL");
    expect(await crashed).toEqual({ code: null, signal: "SIGKILL" });
    const { pid } = await restarted;
    expect(pid).not.toBe(before);
    expect(alive(pid)).toBe(true);
    // The same client reconnects to the same URL and finds the data replayed from the AOF.
    expect(await client.get("kept")).toBe("across crashes");
  });

  it("gives up after its restart budget and reports it", async () => {
    const server = await startEmbeddedRedis({ dir: tempDir(), maxRestartsPerMinute: 1 });
    servers.push(server);
    const failed = new Promise<Error>((resolve) => server.once("failed", resolve));
    const restarted = new Promise<{ pid: number }>((resolve) => server.once("restart", resolve));
    process.kill(server.pid, "SIGKILL");
    process.kill((await restarted).pid, "SIGKILL");
    expect((await failed).message).toBe("redis-server crashed 2 times within a minute; giving up");
  });

  it("dies with its parent, even when the parent is SIGKILLed", async () => {
    const dir = tempDir();
    const script = `
      import { startEmbeddedRedis } from ${JSON.stringify(path.resolve("src/queue/redis-server.ts"))};
      const server = await startEmbeddedRedis({ dir: ${JSON.stringify(dir)} });
      console.log(server.pid);
      setInterval(() => {}, 1000);
    `;
    const parent = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const redisPid = await new Promise<number>((resolve) =>
      parent.stdout.once("data", (chunk: Buffer) => resolve(Number(chunk.toString().trim()))),
    );
    expect(alive(redisPid)).toBe(true);
    parent.kill("SIGKILL");
    expect(await waitFor(() => !alive(redisPid), 5000)).toBe(true);
  });

  it("explains how to install redis-server when it is missing", async () => {
    const attempt = startEmbeddedRedis({ dir: tempDir(), binary: "redis-server-that-does-not-exist" });
    await expect(attempt).rejects.toBeInstanceOf(UserFacingError);
    await expect(attempt).rejects.toThrow(
      /redis-server-that-does-not-exist was not found on PATH: .*apt-get install -y redis-server.*REDIS_URL/,
    );
  });
});

describe("resolveRedis", () => {
  it("starts the embedded server under STATE_DIR/redis when REDIS_URL is unset", async () => {
    const stateDir = tempDir();
    const redis = await resolveRedis({ redisUrl: undefined, stateDir });
    try {
      expect(redis.embedded).toBe(true);
      expect(existsSync(path.join(stateDir, "redis", "appendonlydir"))).toBe(true);
      expect(await connect(redis.url).ping()).toBe("PONG");
    } finally {
      await redis.stop();
    }
  });

  it("uses a reachable REDIS_URL as is", async () => {
    const server = await start();
    const redis = await resolveRedis({ redisUrl: server.url, stateDir: tempDir() });
    expect(redis).toMatchObject({ url: server.url, embedded: false });
  });

  it("refuses a REDIS_URL whose Redis evicts keys when full, which would drop jobs and photos", async () => {
    const server = await start();
    const admin = connect(server.url);
    await admin.config("SET", "maxmemory-policy", "allkeys-lru");
    // Without a maxmemory it never evicts: accepted.
    await expect(resolveRedis({ redisUrl: server.url, stateDir: tempDir() })).resolves.toMatchObject({
      embedded: false,
    });
    await admin.config("SET", "maxmemory", "1gb");
    await expect(resolveRedis({ redisUrl: server.url, stateDir: tempDir() })).rejects.toThrow(
      `Redis at ${server.url} (REDIS_URL) evicts keys when full (maxmemory-policy allkeys-lru): queued jobs and stored photos would vanish; set maxmemory-policy to noeviction`,
    );
    await admin.config("SET", "maxmemory-policy", "noeviction");
    await expect(resolveRedis({ redisUrl: server.url, stateDir: tempDir() })).resolves.toMatchObject({
      embedded: false,
    });
  });

  it("names an unreachable REDIS_URL in one line, without its password", async () => {
    const attempt = resolveRedis({ redisUrl: "redis://:hunter2@127.0.0.1:1/0", stateDir: tempDir() });
    await expect(attempt).rejects.toBeInstanceOf(UserFacingError);
    const message = await attempt.catch((error: Error) => error.message);
    expect(message).toMatch(
      /^Cannot reach Redis at redis:\/\/:\[redacted\]@127\.0\.0\.1:1\/0 \(REDIS_URL\): /,
    );
    expect(message).not.toContain("hunter2");
    expect(message).not.toContain("\n");
  });
});
