// The system the chaos run (chaos-run.ts) breaks, wired as `start` wires it: the Discord bot (its queue
// side from src/bots/queue-side.ts) against the fake Discord, a private redis-server with its
// append-only file, and engine worker processes — this CLI's own `engine` command on the tiny sd1
// fixture checkpoint, on the CPU — all on loopback. Each part can be broken and brought back.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startDiscordBot } from "../../bots/discord/bot.js";
import { FakeDiscord } from "../../bots/discord/fake/server.js";
import { startOnQueue } from "../../bots/queue-side.js";
import type { ChatCommandsOptions } from "../../commands/service.js";
import { FIXTURE_MODEL, loadConfig } from "../../config.js";
import {
  type EngineProcess,
  engineCommandLine,
  spawnEngineProcess,
  stopEngineProcess,
} from "../../engine/worker/process.js";
import { type EmbeddedRedis, freePort, startEmbeddedRedis } from "../../queue/redis-server.js";
import type { RunningService } from "../../services.js";

export interface ChaosSystemOptions {
  /** The command line that runs `engine` (default: this CLI's own; the CI test runs it through tsx). */
  engineCommand?: readonly string[];
  /** ENGINE_LOCK_SECONDS of the engines: how long a killed engine's job waits before it runs again. */
  lockSeconds: number;
  /** The operator's /imagic settings (the bot's imagicDefaults): few steps, so a job takes seconds. */
  imagicDefaults: ChatCommandsOptions["imagicDefaults"];
  blobTtlSeconds: number;
}

export interface ChaosEngine {
  name: string;
  process: EngineProcess;
  /** Its ENGINE_HTTP_PORT (/metrics says whether it is running a job). */
  port: number;
}

export interface ChaosSystem {
  fake: FakeDiscord;
  redisUrl(): string;
  /** redis-server's pid now (it changes on each restart). */
  redisPid(): number;
  restartRedis(): Promise<void>;
  startBot(): Promise<void>;
  stopBot(): Promise<void>;
  /** Starts an engine process and resolves once it takes jobs. */
  startEngine(name: string): Promise<ChaosEngine>;
  /** Whether the engine is running a job now (its engine_jobs_active gauge). */
  busy(engine: ChaosEngine): Promise<boolean>;
  /** Every engine process started so far, alive or not. */
  engines: ChaosEngine[];
  /** Stops the bot, every engine still alive (SIGTERM), Redis and the fake, and removes the data. */
  close(): Promise<void>;
}

export async function startChaosSystem(options: ChaosSystemOptions): Promise<ChaosSystem> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "chaos-"));
  const fake = await FakeDiscord.start();
  const redisDir = path.join(dir, "redis");
  let redis: EmbeddedRedis = await startEmbeddedRedis({ dir: redisDir });
  const port = redis.port;
  // The settings an operator would give: the fixture model, blob TTL, state (compiled graphs) in one
  // folder that every engine process shares, as engines on one host do.
  const settings = {
    MODEL: FIXTURE_MODEL,
    STATE_DIR: dir,
    BLOB_TTL_SECONDS: String(options.blobTtlSeconds),
  };
  const config = loadConfig(settings, { envFile: false });
  let bot: RunningService | undefined;
  const engines: ChaosEngine[] = [];

  const system: ChaosSystem = {
    fake,
    engines,
    redisUrl: () => redis.url,
    redisPid: () => redis.pid,
    async restartRedis() {
      await redis.stop();
      redis = await startEmbeddedRedis({ dir: redisDir, port });
    },
    async startBot() {
      bot = await startOnQueue("discord", config, redis.url, (side) =>
        startDiscordBot({
          token: fake.token,
          apiUrl: fake.apiUrl,
          ...side,
          commands: { imagicDefaults: options.imagicDefaults },
        }),
      );
    },
    async stopBot() {
      await bot?.stop();
      bot = undefined;
    },
    async startEngine(name) {
      const httpPort = await freePort();
      const process = await spawnEngineProcess(
        options.engineCommand ?? engineCommandLine(),
        {
          ...settings,
          REDIS_URL: redis.url,
          ENGINE_DEVICE: "cpu",
          ENGINE_DTYPE: "fp32",
          ENGINE_HTTP_PORT: String(httpPort),
          ENGINE_LOCK_SECONDS: String(options.lockSeconds),
          HF_HUB_OFFLINE: "1",
          // Their reconnect warnings during a Redis restart are the chaos, not news.
          LOG_LEVEL: "error",
        },
        // Outside the project: a developer's .env does not reach the engines.
        { cwd: dir },
      );
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
      await system.stopBot();
      await Promise.all(engines.map((engine) => stopEngineProcess(engine.process, 30_000)));
      await redis.stop();
      await fake.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return system;
}
