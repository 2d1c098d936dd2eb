// A chat bot in its own process (bot-child.ts), started and ready to be SIGKILLed: what a bot that dies
// mid-post leaves behind, with no cleanup of any kind.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll } from "vitest";
import type { BlobLimits } from "../../../src/queue/blobs.js";
import type { QueueClient } from "../../../src/queue/client.js";
import type { PipelineRegistry } from "../../../src/queue/worker.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";

const CHILD = fileURLToPath(new URL("./bot-child.ts", import.meta.url));

/** The blob limits of the chat tests' worlds (each platform's support.ts): the child shares their blobs. */
export const BOT_BLOB_LIMITS: BlobLimits = {
  ttlSeconds: 3600,
  maxBytes: 12 * 1024 * 1024,
  userQuotaBytes: 64 * 1024 * 1024,
};

export interface BotProcessEnv {
  PLATFORM: "discord" | "slack";
  REDIS_URL: string;
  API_URL: string;
  BOT_TOKEN: string;
  /** Slack's Socket Mode token. */
  APP_TOKEN?: string;
  DELIVERY_LEASE_MS: string;
}

/** Starts bot-child.ts and resolves once its bot is connected and following the queue. */
export async function startBotProcess(env: BotProcessEnv): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", CHILD], {
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`bot process exited with ${code} before it was ready`)));
    child.stdout?.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolve();
    });
  });
  return child;
}

/** SIGKILLs a bot process and resolves once it is gone. */
export async function killBotProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await gone;
}

/**
 * The bot process a kill test's cases share: each case kills the one running and starts its successor
 * (`next`), which the following case goes on with (`current`); `close` kills whichever still runs.
 */
export function botProcesses(start: () => Promise<ChildProcess>) {
  let running: ChildProcess | undefined;
  const next = async () => {
    running = await start();
    return running;
  };
  return {
    next,
    current: async () => running ?? next(),
    close: async () => {
      if (running) await killBotProcess(running);
    },
  };
}

/** What a chat platform's test world (its support.ts) gives a kill test. */
interface KillTestWorld {
  h: { client(): Promise<QueueClient> };
  worker(pipelines: PipelineRegistry): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * A kill test's shared setup, registered as the file's beforeAll/afterAll: the platform's world with a
 * worker on lightweight pipelines, a client on its queue (to look at the jobs the bot processes queued)
 * and the bot processes the cases kill and restart.
 */
export function killTestWorld<W extends KillTestWorld>(
  world: () => Promise<W>,
  startBot: (w: W) => Promise<ChildProcess>,
) {
  let w: W | undefined;
  let queue: QueueClient | undefined;
  const started = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error("killTestWorld: used before its beforeAll ran");
    return v;
  };
  const bots = botProcesses(() => startBot(started(w)));
  beforeAll(async () => {
    w = await world();
    await w.worker(lightweightPipelines({ steps: 3, stepMs: 20 }));
    queue = await w.h.client();
  });
  afterAll(async () => {
    await bots.close();
    await queue?.close();
    await w?.close();
  });
  return {
    bots,
    get w(): W {
      return started(w);
    },
    get queue(): QueueClient {
      return started(queue);
    },
  };
}
