import { type ChildProcess, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { accessSync, constants, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { type Config, redactUrl } from "../config.js";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";

const log = childLogger("redis");

const INSTALL_HINT =
  "install it (Debian/Ubuntu: sudo apt-get install -y redis-server) or set REDIS_URL to an existing Redis";

/**
 * Runs redis-server in the foreground (`--daemonize no`) under a tiny sh guard that holds our stdin:
 * when the pipe closes — stop(), or this process dying, even by SIGKILL — the guard's watcher sends
 * redis SIGTERM, so a private Redis never outlives its parent. Redis itself must not get the pipe.
 * When redis exits first (a crash), the watcher is ended so it can never signal a reused pid; the
 * guard exits with redis's status.
 */
const GUARD = [
  "exec 3<&0 </dev/null",
  '"$0" "$@" 3<&- &',
  "pid=$!",
  "(cat <&3 >/dev/null; kill -TERM $pid 2>/dev/null) &",
  "watcher=$!",
  "exec 3<&-",
  "wait $pid",
  "status=$?",
  "kill $watcher 2>/dev/null",
  "exit $status",
].join("\n");

export interface EmbeddedRedisOptions {
  /** Data folder (created): the append-only file lives here. */
  dir: string;
  /** Loopback port; default: a free one. */
  port?: number;
  /** The server executable, looked up on PATH. */
  binary?: string;
  /** Restarts allowed per minute after crashes before giving up (emits "failed"). */
  maxRestartsPerMinute?: number;
}

export interface CrashInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

type Events = {
  /** redis-server exited without stop(); a restart follows unless the budget is spent. */
  crash: [CrashInfo];
  /** Serving again after a crash, on the same port and data. */
  restart: [{ pid: number }];
  /** Gave up restarting: Redis is down for good. */
  failed: [Error];
};

export interface EmbeddedRedis extends EventEmitter<Events> {
  readonly url: string;
  readonly port: number;
  /** redis-server's own pid (changes on restart). */
  readonly pid: number;
  stop(): Promise<void>;
}

/** The guard exits with redis's status: 128+n means redis died of signal n. */
function exitStatus(code: number | null): CrashInfo {
  if (code === null || code <= 128) return { code, signal: null };
  const name = Object.entries(os.constants.signals).find(([, n]) => n === code - 128)?.[0];
  return { code: null, signal: (name as NodeJS.Signals | undefined) ?? null };
}

function findOnPath(binary: string): string | undefined {
  const candidates = binary.includes("/")
    ? [binary]
    : (process.env.PATH ?? "").split(path.delimiter).map((dir) => path.join(dir, binary));
  return candidates.find((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** A loopback TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One PING with no retries; resolves the server's pid, rejects with the connection's error. */
interface Probed {
  pid: number;
  /** Bytes Redis may use (0: no limit) and what it does at that limit. */
  maxmemory: number;
  policy: string;
}

async function probe(url: string, timeoutMs: number): Promise<Probed> {
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
  });
  // ioredis rejects connect() with a bare "Connection is closed."; the cause comes as an "error" event.
  let cause: Error | undefined;
  client.on("error", (error: Error) => {
    cause ??= error;
  });
  try {
    await client.connect();
    const info = await client.info();
    const field = (name: string) => new RegExp(`^${name}:(.*?)\r?$`, "m").exec(info)?.[1] ?? "";
    return {
      pid: Number(field("process_id") || 0),
      maxmemory: Number(field("maxmemory") || 0),
      policy: field("maxmemory_policy"),
    };
  } catch (error) {
    throw cause ?? error;
  } finally {
    client.disconnect();
  }
}

class Supervisor extends EventEmitter<Events> implements EmbeddedRedis {
  readonly url: string;
  pid = 0;
  #child: ChildProcess | undefined;
  /** The child once it answered; cleared when it exits. */
  #serving: ChildProcess | undefined;
  #stopping = false;
  #restarts: number[] = [];
  #output: string[] = [];

  constructor(
    readonly port: number,
    private readonly executable: string,
    private readonly dir: string,
    private readonly maxRestartsPerMinute: number,
  ) {
    super();
    this.url = `redis://127.0.0.1:${port}`;
  }

  /** Spawns redis-server and waits until it answers; rejects with its last output if it exits first. */
  async launch(): Promise<void> {
    // biome-ignore format: flag/value pairs read best side by side
    const args = [
      "--bind", "127.0.0.1",
      "--port", String(this.port),
      "--dir", this.dir,
      "--daemonize", "no",
      "--appendonly", "yes",
      "--save", "", // the append-only file is the persistence; no RDB snapshots on top
      "--protected-mode", "yes",
      "--logfile", "",
    ];
    this.#output = [];
    // detached: its own process group, so a terminal's Ctrl-C reaches only us and we stop Redis in order.
    const child = spawn("/bin/sh", ["-c", GUARD, this.executable, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
    });
    this.#child = child;
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (text: string) => {
        for (const line of text.split("\n").filter(Boolean)) {
          this.#output.push(line);
          if (this.#output.length > 20) this.#output.shift();
          log.debug({ port: this.port }, line);
        }
      });
    }
    const exited = new Promise<CrashInfo>((resolve) =>
      child.once("exit", (code) => resolve(exitStatus(code))),
    );
    exited.then((info) => this.#onExit(child, info));

    const deadline = Date.now() + 15_000;
    for (;;) {
      const done = await Promise.race([exited, sleep(50).then(() => undefined)]);
      if (done) {
        throw new UserFacingError(
          `redis-server on port ${this.port} exited at start (code ${done.code}): ${this.#output.slice(-3).join(" | ")}`,
        );
      }
      try {
        this.pid = (await probe(this.url, 1000)).pid;
        // It may have died since it answered and its exit been ignored as a launch failure: look again.
        if (child.exitCode !== null || child.signalCode !== null) continue;
        this.#serving = child;
        return;
      } catch (error) {
        if (Date.now() > deadline) {
          await this.#kill(child);
          throw new UserFacingError(`redis-server on port ${this.port} did not answer within 15 s: ${error}`);
        }
      }
    }
  }

  async #onExit(child: ChildProcess, info: CrashInfo): Promise<void> {
    child.stdin?.destroy();
    // Only a server that was serving crashes; one dying during launch() fails that launch instead.
    if (this.#stopping || child !== this.#serving) return;
    this.#serving = undefined;
    log.error(
      { port: this.port, ...info, output: this.#output.slice(-5) },
      "redis-server exited; restarting",
    );
    this.emit("crash", info);
    await this.#restart();
  }

  /** Relaunches until one serves; each attempt, failed launches included, counts against the budget. */
  async #restart(): Promise<void> {
    for (;;) {
      const now = Date.now();
      this.#restarts = this.#restarts.filter((t) => now - t < 60_000);
      if (this.#restarts.length >= this.maxRestartsPerMinute) {
        const error = new Error(
          `redis-server crashed ${this.#restarts.length + 1} times within a minute; giving up`,
        );
        log.fatal({ port: this.port }, error.message);
        this.emit("failed", error);
        return;
      }
      this.#restarts.push(now);
      await sleep(200 * this.#restarts.length);
      if (this.#stopping) return;
      try {
        await this.launch();
        log.info({ port: this.port, redisPid: this.pid }, "redis-server restarted");
        this.emit("restart", { pid: this.pid });
        return;
      } catch (error) {
        if (this.#stopping) return;
        log.error({ port: this.port, err: error }, "redis-server did not come back");
      }
    }
  }

  /** Closes the guard's stdin (redis gets SIGTERM, flushes its AOF and exits); SIGKILL after 10 s. */
  async #kill(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.stdin?.end();
    const timer = setTimeout(() => {
      if (this.pid) process.kill(this.pid, "SIGKILL");
      child.kill("SIGKILL");
    }, 10_000);
    await exited;
    clearTimeout(timer);
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#child) await this.#kill(this.#child);
    process.off("exit", this.killNow);
  }

  /** Last resort on process exit (synchronous: no waiting possible there). */
  readonly killNow = (): void => {
    if (this.#stopping || !this.pid) return;
    try {
      process.kill(this.pid, "SIGTERM");
    } catch {
      // already gone
    }
  };
}

/**
 * Starts a private redis-server on 127.0.0.1 (free port unless given), data and append-only file in
 * `dir`; restarts it when it crashes, with the same port and data. Throws UserFacingError when
 * redis-server is not installed or does not start.
 */
export async function startEmbeddedRedis(options: EmbeddedRedisOptions): Promise<EmbeddedRedis> {
  const binary = options.binary ?? "redis-server";
  const executable = findOnPath(binary);
  if (!executable) throw new UserFacingError(`${binary} was not found on PATH: ${INSTALL_HINT}`);
  mkdirSync(options.dir, { recursive: true });
  // A free port can be taken between the probe and redis binding it: try a few when we chose it.
  for (let attempt = 1; ; attempt++) {
    const supervisor = new Supervisor(
      options.port ?? (await freePort()),
      executable,
      path.resolve(options.dir),
      options.maxRestartsPerMinute ?? 5,
    );
    try {
      await supervisor.launch();
    } catch (error) {
      if (options.port === undefined && attempt < 3 && /in use/i.test(String(error))) continue;
      throw error;
    }
    process.on("exit", supervisor.killNow);
    log.info(
      { url: supervisor.url, redisPid: supervisor.pid, dir: options.dir },
      "embedded redis-server ready",
    );
    return supervisor;
  }
}

export interface ResolvedRedis {
  url: string;
  /** True when this process started (and owns) the server. */
  embedded: boolean;
  /** The embedded server's supervisor (its "crash"/"restart"/"failed" events); absent for REDIS_URL. */
  server?: EmbeddedRedis;
  stop(): Promise<void>;
}

/**
 * REDIS_URL when set (checked with one PING, so an unreachable server is one clear line at start-up),
 * otherwise an embedded redis-server with its data under STATE_DIR/redis.
 */
export async function resolveRedis(config: Pick<Config, "redisUrl" | "stateDir">): Promise<ResolvedRedis> {
  if (config.redisUrl) {
    const url = config.redisUrl;
    let probed: Probed;
    try {
      probed = await probe(url, 5000);
    } catch (error) {
      throw new UserFacingError(
        `Cannot reach Redis at ${redactUrl(url)} (REDIS_URL): ${(error as Error).message}`,
      );
    }
    // BullMQ needs noeviction (it only prints a warning): a full Redis that evicts drops jobs, their
    // locks and the photos they wait on without a word. One with no maxmemory never evicts.
    if (probed.maxmemory > 0 && probed.policy !== "noeviction") {
      throw new UserFacingError(
        `Redis at ${redactUrl(url)} (REDIS_URL) evicts keys when full (maxmemory-policy ${probed.policy}): ` +
          "queued jobs and stored photos would vanish; set maxmemory-policy to noeviction",
      );
    }
    log.info({ url: redactUrl(url) }, "using Redis at REDIS_URL");
    return { url, embedded: false, stop: async () => {} };
  }
  const server = await startEmbeddedRedis({ dir: path.join(config.stateDir, "redis") });
  return { url: server.url, embedded: true, server, stop: () => server.stop() };
}
