// The system the chaos run (chaos-run.ts) breaks, on loopback, each part in the process it has in
// production: the fake Discord (here), a private redis-server with its append-only file (here, restarted
// on the same port and data), the Discord bot (a child process running `bench chaos-bot`: `bot run
// discord` with the run's /imagic settings) and engine workers (child processes running this CLI's own
// `engine` on the tiny sd1 fixture checkpoint, on the CPU). Each part can be broken and brought back.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { FakeDiscord } from "../../bots/discord/fake/server.js";
import { type CliProcess, cliCommandLine, spawnCliProcess, stopCliProcess } from "../../child-process.js";
import { FIXTURE_MODEL } from "../../config.js";
import { type EmbeddedRedis, freePort, startEmbeddedRedis } from "../../queue/redis-server.js";

export interface ChaosSystemOptions {
  /** This CLI's command line, without a command (default: this process's; the CI test runs it through tsx). */
  cli?: readonly string[];
  /** ENGINE_LOCK_SECONDS of the engines: how long a killed engine's job waits before it runs again. */
  lockSeconds: number;
  blobTtlSeconds: number;
}

export interface ChaosEngine {
  name: string;
  process: CliProcess;
  /** Its ENGINE_HTTP_PORT (/metrics says whether it is running a job). */
  port: number;
}

export interface ChaosSystem {
  fake: FakeDiscord;
  redisUrl(): string;
  /** redis-server's pid now (it changes on each restart). */
  redisPid(): number;
  restartRedis(): Promise<void>;
  /** Starts a bot process and resolves once it is on the gateway and following the queue. */
  startBot(): Promise<void>;
  /** Stops the bot: SIGTERM (a clean stop), or SIGKILL (whatever it was doing is cut off). */
  stopBot(how: "SIGTERM" | "SIGKILL"): Promise<void>;
  /** Starts an engine process and resolves once it takes jobs. */
  startEngine(name: string): Promise<ChaosEngine>;
  /** Whether the engine is running a job now (its engine_jobs_active gauge). */
  busy(engine: ChaosEngine): Promise<boolean>;
  /** Every engine and bot process started so far, alive or not. */
  engines: ChaosEngine[];
  bots: CliProcess[];
  /** Stops the bot and every engine still alive (SIGTERM), Redis and the fake, and removes the data. */
  close(): Promise<void>;
}

export async function startChaosSystem(options: ChaosSystemOptions): Promise<ChaosSystem> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "chaos-"));
  const fake = await FakeDiscord.start();
  const redisDir = path.join(dir, "redis");
  let redis: EmbeddedRedis = await startEmbeddedRedis({ dir: redisDir });
  const port = redis.port;
  const cli = options.cli ?? cliCommandLine();
  // The settings an operator would give every process: the fixture model, the blob TTL, and one state
  // folder (compiled graphs) that every engine process shares, as engines on one host do.
  const settings = () => ({
    REDIS_URL: redis.url,
    MODEL: FIXTURE_MODEL,
    STATE_DIR: dir,
    BLOB_TTL_SECONDS: String(options.blobTtlSeconds),
    HF_HUB_OFFLINE: "1",
    // Reconnect warnings during a Redis restart are the chaos, not news.
    LOG_LEVEL: "error",
  });
  // In the run's folder, outside the project: a developer's .env does not reach the children.
  const spawnChild = (what: string, command: string[], env: NodeJS.ProcessEnv) =>
    spawnCliProcess(what, [...cli, ...command], { ...settings(), ...env }, { cwd: dir });
  let bot: CliProcess | undefined;
  const bots: CliProcess[] = [];
  const engines: ChaosEngine[] = [];

  const system: ChaosSystem = {
    fake,
    engines,
    bots,
    redisUrl: () => redis.url,
    redisPid: () => redis.pid,
    async restartRedis() {
      await redis.stop();
      redis = await startEmbeddedRedis({ dir: redisDir, port });
    },
    async startBot() {
      bot = await spawnChild("bot", ["bench", "chaos-bot"], {
        DISCORD_TOKEN: fake.token,
        DISCORD_API_URL: fake.apiUrl,
      });
      bots.push(bot);
    },
    async stopBot(how) {
      if (!bot) return;
      if (how === "SIGTERM") await stopCliProcess(bot, 30_000);
      else {
        bot.child.kill("SIGKILL");
        await bot.exited;
      }
      bot = undefined;
    },
    async startEngine(name) {
      const httpPort = await freePort();
      const process = await spawnChild("engine", ["engine"], {
        ENGINE_DEVICE: "cpu",
        ENGINE_DTYPE: "fp32",
        ENGINE_HTTP_PORT: String(httpPort),
        ENGINE_LOCK_SECONDS: String(options.lockSeconds),
      });
      const engine = { name, process, port: httpPort };
      engines.push(engine);
      return engine;
    },
    async busy(engine) {
      const metrics = await fetch(`http://127.0.0.1:${engine.port}/metrics`)
        .then((response) => response.text())
        .catch(() => "");
      return /^engine_jobs_active 1$/m.test(metrics);
    },
    async close() {
      await system.stopBot("SIGTERM");
      await Promise.all(engines.map((engine) => stopCliProcess(engine.process, 30_000)));
      await redis.stop();
      await fake.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return system;
}
