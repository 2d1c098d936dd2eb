// The engine process: loads the model once, serves queue jobs one at a time (one process per GPU),
// and answers health/readiness/metrics on ENGINE_HTTP_PORT. `engine` runs it alone, `start` with the
// bots; N processes on N hosts against one Redis scale it out.
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import type { Config } from "../../config.js";
import { childLogger } from "../../log.js";
import { BlobStore } from "../../queue/blobs.js";
import { QUEUE_NAME } from "../../queue/keys.js";
import {
  type EngineWorker,
  type PipelineRegistry,
  type StartWorkerOptions,
  startWorker,
} from "../../queue/worker.js";
import type { Service } from "../../services.js";
import { StableDiffusion } from "../index.js";
import { type ModelSettings, modelLoadOptions } from "../load-options.js";
import { type EngineHttp, startEngineHttp } from "./http.js";
import { engineMetrics } from "./metrics.js";
import { enginePipelines } from "./pipelines.js";

const log = childLogger("engine");

/** The engine writes its own outputs (states, grids): only Redis's bulk limit applies to them. */
const ENGINE_BLOB_MAX_BYTES = 512 * 1024 ** 2;

export interface EngineModel {
  modelId: string;
  pipelines: PipelineRegistry;
  /** Where the model computes; sets the default lock (lockSeconds). */
  device?: StableDiffusion["device"];
  release(): Promise<void>;
}

export type EngineConfig = ModelSettings &
  Pick<
    Config,
    | "model"
    | "modelIsFixture"
    | "engineHttpPort"
    | "engineLockSeconds"
    | "blobTtlSeconds"
    | "userMaxActiveJobs"
  >;

export interface StartEngineOptions {
  config: EngineConfig;
  redisUrl: string;
  /** Loads the model and its pipelines; default: StableDiffusion.load(MODEL) and enginePipelines. */
  loadModel?: (config: EngineConfig, signal?: AbortSignal) => Promise<EngineModel>;
  /** Aborted when the process is told to stop: a model download in progress stops at once. */
  signal?: AbortSignal;
  /** Worker timings and name (defaults suit production: 30 s locks). */
  worker?: Pick<
    StartWorkerOptions,
    | "lockDurationMs"
    | "stalledIntervalMs"
    | "cancelPollMs"
    | "progressIntervalMs"
    | "previewIntervalMs"
    | "name"
  >;
  /** How long a shutdown lets the current job finish before handing it back to the queue. */
  shutdownGraceMs?: number;
}

export interface RunningEngine {
  modelId: string;
  /** The HTTP port actually bound (ENGINE_HTTP_PORT), undefined when disabled. */
  httpPort?: number;
  worker: EngineWorker;
  stop(): Promise<void>;
}

async function loadStableDiffusion(config: EngineConfig, signal?: AbortSignal): Promise<EngineModel> {
  if (config.modelIsFixture) {
    log.warn(
      { model: config.model },
      "MODEL is unset: the engine serves the tiny TEST checkpoint, whose images are noise",
    );
  }
  const sd = await StableDiffusion.load(config.model, { ...modelLoadOptions(config), signal });
  return {
    modelId: sd.modelId,
    pipelines: enginePipelines(sd),
    device: sd.device,
    release: () => sd.close(),
  };
}

/**
 * The lock a job's run holds: ENGINE_LOCK_SECONDS, else by device. onnxruntime-node runs each session on
 * the event loop's thread (microsoft/onnxruntime#19611), so the lock is renewed only between runs: a GPU's
 * runs take milliseconds, but one training step or session build of an SD model on the CPU takes minutes
 * (docs/PERFORMANCE.md, "CPU, full SD 1.5 shapes"), and a lock shorter than that is lost in every job.
 */
function lockSeconds(setting: number | undefined, device: EngineModel["device"]): number {
  return setting ?? (device === "cpu" ? 900 : 120);
}

/**
 * ENGINE_LOCK_SECONDS as the worker's lock, and a stalled check every quarter of it (at most the
 * default 30 s): a crashed engine's job goes to another engine within 1¼ locks.
 */
function lockTimings(lockSeconds: number): Pick<StartWorkerOptions, "lockDurationMs" | "stalledIntervalMs"> {
  const lockDurationMs = lockSeconds * 1000;
  return { lockDurationMs, stalledIntervalMs: Math.min(30_000, lockDurationMs / 4) };
}

export async function startEngine(options: StartEngineOptions): Promise<RunningEngine> {
  const { config, redisUrl } = options;
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  redis.on("error", (err) => log.warn({ err: err.message }, "redis connection error (reconnecting)"));
  const queue = new Queue(QUEUE_NAME, { connection: { url: redisUrl } });
  const metrics = engineMetrics(queue);
  let model: EngineModel | undefined;
  let worker: EngineWorker | undefined;

  const redisUp = async () => {
    try {
      await Promise.race([
        redis.ping(),
        new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 2000)),
      ]);
      return true;
    } catch {
      return false;
    }
  };
  const probe = {
    async healthy() {
      const ok = await redisUp();
      return { ok, detail: { redis: ok ? "up" : "unreachable" } };
    },
    async ready() {
      const redisOk = await redisUp();
      const modelOk = model !== undefined;
      const workerOk = worker?.isRunning() === true;
      return {
        ok: redisOk && modelOk && workerOk,
        detail: {
          redis: redisOk ? "up" : "unreachable",
          model: modelOk ? model?.modelId : "loading",
          worker: workerOk ? "running" : "stopped",
        },
      };
    },
  };
  // Health first: an orchestrator sees the process alive (and not ready) during a long model load.
  let server: EngineHttp | undefined;
  const closeAll = async () => {
    metrics.setReady(false);
    await worker?.close(options.shutdownGraceMs ?? 30_000);
    await model?.release();
    await server?.close();
    await queue.close();
    redis.disconnect();
  };
  try {
    if (config.engineHttpPort !== 0)
      server = await startEngineHttp(config.engineHttpPort, probe, metrics.registry);
    const started = performance.now();
    model = await (options.loadModel ?? loadStableDiffusion)(config, options.signal);
    log.info({ model: model.modelId, seconds: (performance.now() - started) / 1000 }, "model loaded");
    worker = await startWorker({
      redisUrl,
      blobs: new BlobStore(redis, {
        ttlSeconds: config.blobTtlSeconds,
        maxBytes: ENGINE_BLOB_MAX_BYTES,
        userQuotaBytes: 0,
      }),
      pipelines: model.pipelines,
      maxActivePerUser: config.userMaxActiveJobs,
      observer: metrics.observer,
      modelId: model.modelId,
      ...lockTimings(lockSeconds(config.engineLockSeconds, model.device)),
      ...options.worker,
    });
  } catch (error) {
    await closeAll();
    throw error;
  }
  metrics.setReady(true);
  log.info(
    { model: model.modelId, jobs: Object.keys(model.pipelines), http: server?.port ?? "off" },
    "engine ready: taking jobs",
  );
  return {
    modelId: model.modelId,
    ...(server ? { httpPort: server.port } : {}),
    worker,
    async stop() {
      log.info("engine stopping: finishing or handing back the current job");
      await closeAll();
    },
  };
}

/** The engine as a service of `start` and `engine` (src/services.ts). */
export const engineService: Service = {
  name: "engine",
  async start({ config, redisUrl, signal }) {
    return startEngine({ config, redisUrl, signal });
  },
};
