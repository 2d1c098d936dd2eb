// The engine's side of the queue: a BullMQ Worker whose processor looks the job type up in a
// pipelines registry and gives the pipeline its payload, blobs, progress reporting and an AbortSignal.
import { DelayedError, type Job, UnrecoverableError, WaitingError, Worker } from "bullmq";
import { Redis } from "ioredis";
import type { Logger } from "pino";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import type { BlobKind, BlobStore } from "./blobs.js";
import { cacheConcept, cachedConcept } from "./concepts.js";
import { recordDuration } from "./durations.js";
import {
  isJobName,
  JOB_NAMES,
  type JobName,
  type JobPayload,
  type JobProgress,
  type JobResult,
  payloadSchemas,
  resultSchemas,
} from "./jobs.js";
import { QUEUE_NAME, type QueueKeys, queueKeys } from "./keys.js";

/** A progress report from a pipeline; `preview` is only called when a preview is due. */
export interface ProgressUpdate {
  stage: string;
  step: number;
  total: number;
  loss?: number;
  preview?: () => Promise<Uint8Array> | Uint8Array;
}

export interface PipelineContext<N extends JobName> {
  jobId: string;
  name: N;
  payload: JobPayload<N>;
  /** 1 on the first run; more after a crash or a transient error. */
  attempt: number;
  blobs: BlobStore;
  /** Aborted when the user cancels or the worker shuts down: check it between steps. */
  signal: AbortSignal;
  /** Reports progress (throttled; previews at most every previewIntervalMs). Throws once aborted. */
  progress(update: ProgressUpdate): Promise<void>;
  /** Stores an output (an engine blob: not counted against the user's quota). */
  putBlob(bytes: Uint8Array, kind: BlobKind): Promise<string>;
  log: Logger;
}

export type Pipeline<N extends JobName> = (ctx: PipelineContext<N>) => Promise<JobResult<N>>;
/** Job type → pipeline. A type without one fails with "… is not available yet". */
export type PipelineRegistry = { [N in JobName]?: Pipeline<N> };

export type JobOutcome = "completed" | "failed" | "cancelled" | "handed-back";

/** Hooks for metrics (src/engine/worker/metrics.ts). */
export interface WorkerObserver {
  jobStarted?(name: JobName): void;
  /** Jobs this worker is running now (0 or 1), on every change. */
  running?(count: number): void;
  jobFinished?(name: JobName, outcome: JobOutcome, seconds: number): void;
  step?(name: JobName, stage: string, seconds: number): void;
}

export interface StartWorkerOptions {
  redisUrl: string;
  blobs: BlobStore;
  pipelines: PipelineRegistry;
  /** Jobs one user may have running at once across all workers. */
  maxActivePerUser: number;
  /** BullMQ lock: a worker that stops renewing it (crash) loses the job after this long. Default 2 min. */
  lockDurationMs?: number;
  /** How often this worker looks for stalled jobs of crashed workers. Default 30 s. */
  stalledIntervalMs?: number;
  /** How often cancel flags are looked at. */
  cancelPollMs?: number;
  progressIntervalMs?: number;
  previewIntervalMs?: number;
  observer?: WorkerObserver;
  /** Shown in logs and in Redis CLIENT LIST. */
  name?: string;
  /** The BullMQ queue (default "edits"; the benchmark uses its own). */
  queueName?: string;
  /**
   * The model this engine runs: learned concepts are cached for it (and a `swap.concept` job whose
   * concept is cached finishes at once). Unset: nothing is cached.
   */
  modelId?: string;
}

/**
 * The lock is renewed on a timer (every half lock): graph building and session compilation can block
 * the event loop for seconds on a big model, so the lock is long. A SIGKILLed worker's job is picked
 * up by another worker within lockDuration + stalledInterval.
 */
const DEFAULT_LOCK_MS = 120_000;

/**
 * Runs a job may lose to a dead worker (SIGKILL, the OOM killer) and still run again; the next loss fails
 * it for good: a job that kills its engine every time must not take every engine down in turn.
 */
export const MAX_STALLED_COUNT = 2;

/**
 * How long a progress preview is kept: the bot shows it on the progress message within seconds, and a
 * newer one replaces it; kept for the results' day, a long job's previews filled Redis by the hundred.
 */
export const PREVIEW_TTL_SECONDS = 600;

/** Abort reasons. */
const CANCELLED = "cancelled";
const SHUTDOWN = "shutdown";
const LOCK_LOST = "lock lost";
/** The failure message of a job cancelled before its pipeline said where it stopped. */
const CANCELLED_MESSAGE = "cancelled at the user's request";

// Take a per-user running slot: entries of crashed workers expire with their lease.
const ACQUIRE = `
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])
if redis.call("ZSCORE", KEYS[1], ARGV[3]) or redis.call("ZCARD", KEYS[1]) < tonumber(ARGV[4]) then
  redis.call("ZADD", KEYS[1], ARGV[2], ARGV[3])
  redis.call("PEXPIRE", KEYS[1], ARGV[5])
  return 1
end
return 0
`;

interface Running {
  userId: string;
  jobId: string;
}

export class EngineWorker {
  readonly worker: Worker;
  private readonly redis: Redis;
  private readonly log: Logger;
  private readonly running = new Map<string, Running>();
  /** Jobs whose pipeline returned, until BullMQ confirms their completion. */
  private readonly finishing = new Map<string, { name: JobName; started: number }>();
  private readonly poller: NodeJS.Timeout;
  /** How long a run's lock lasts unrenewed (BullMQ's lockDuration). */
  readonly lockDurationMs: number;
  private readonly keys: QueueKeys;

  constructor(private readonly options: StartWorkerOptions) {
    this.lockDurationMs = options.lockDurationMs ?? DEFAULT_LOCK_MS;
    this.log = childLogger("worker", options.name ? { worker: options.name } : {});
    this.redis = new Redis(options.redisUrl, { maxRetriesPerRequest: null });
    this.redis.on("error", (err) =>
      this.log.warn({ err: err.message }, "redis connection error (reconnecting)"),
    );
    this.keys = queueKeys(options.queueName ?? QUEUE_NAME);
    this.worker = new Worker(
      options.queueName ?? QUEUE_NAME,
      (job, token, signal) => this.process(job, token, signal),
      {
        connection: { url: options.redisUrl, maxRetriesPerRequest: null },
        // One job at a time: one worker process drives one GPU.
        concurrency: 1,
        lockDuration: this.lockDurationMs,
        stalledInterval: options.stalledIntervalMs ?? 30_000,
        maxStalledCount: MAX_STALLED_COUNT,
        ...(options.name ? { name: options.name } : {}),
      },
    );
    this.worker.on("error", (err) => this.log.error({ err }, "worker error"));
    this.worker.on("stalled", (jobId) => this.log.warn({ jobId }, "stalled job moved back to the queue"));
    // A run whose lock could not be renewed (its event loop held past lockDuration by a long synchronous
    // step, or Redis away that long) is no longer this worker's: BullMQ refuses its result and hands the
    // job out again. Stop it, rather than hold the GPU for minutes for a result that is thrown away.
    this.worker.on("lockRenewalFailed", (jobIds) => {
      for (const jobId of jobIds) {
        if (this.worker.cancelJob(jobId, LOCK_LOST)) {
          this.log.error(
            { jobId, lockSeconds: this.lockDurationMs / 1000 },
            "lost the job's lock (event loop blocked or Redis away longer than the lock): stopping this run; " +
              "the job runs again from the start (raise ENGINE_LOCK_SECONDS if the engine blocks this long)",
          );
        }
      }
    });
    this.worker.on("completed", (job) => void this.completed(String(job.id)));
    this.poller = setInterval(() => void this.poll(), options.cancelPollMs ?? 1_000);
  }

  async waitUntilReady(): Promise<void> {
    await this.worker.waitUntilReady();
  }

  isRunning(): boolean {
    return this.worker.isRunning();
  }

  /**
   * Stops taking jobs and waits for the current one; after `graceMs` the current job is aborted and
   * handed back to the queue (another worker, or this one restarted, runs it from the start).
   */
  async close(graceMs = 30_000): Promise<void> {
    const handBack = setTimeout(() => this.worker.cancelAllJobs(SHUTDOWN), graceMs);
    try {
      await this.worker.close();
    } finally {
      clearTimeout(handBack);
      clearInterval(this.poller);
      this.redis.disconnect();
    }
  }

  private async completed(jobId: string): Promise<void> {
    const done = this.finishing.get(jobId);
    if (!done) return;
    this.finishing.delete(jobId);
    const seconds = (performance.now() - done.started) / 1000;
    this.options.observer?.jobFinished?.(done.name, "completed", seconds);
    this.log.info({ jobId, name: done.name, seconds: Number(seconds.toFixed(2)) }, "job completed");
    try {
      await recordDuration(this.redis, this.keys, done.name, seconds);
    } catch (err) {
      this.log.warn({ err }, "could not record the job's duration");
    }
  }

  /** Turns cancel flags of running jobs into aborts and renews their per-user running slots. */
  private async poll(): Promise<void> {
    const running = [...this.running.values()];
    if (running.length === 0) return;
    try {
      const pipeline = this.redis.pipeline();
      for (const r of running) {
        pipeline.exists(this.keys.cancel(r.jobId));
        pipeline.zadd(this.keys.userActive(r.userId), "XX", Date.now() + this.lockDurationMs, r.jobId);
        // The key's own expiry too: left as ACQUIRE set it, a job running past it (any Imagic training, at
        // the default lock) lost its slot, and the user's next job took one more than maxActivePerUser.
        pipeline.pexpire(this.keys.userActive(r.userId), this.slotKeyTtlMs);
      }
      const replies = (await pipeline.exec()) ?? [];
      running.forEach((r, i) => {
        if (replies[3 * i]?.[1] === 1 && this.worker.cancelJob(r.jobId, CANCELLED)) {
          this.log.info({ jobId: r.jobId }, "cancel requested: aborting the running job");
        }
      });
    } catch (err) {
      this.log.warn({ err }, "cancel poll failed (redis unavailable?)");
    }
  }

  private async process(
    job: Job,
    token: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    const name = job.name;
    if (!isJobName(name)) {
      throw new UnrecoverableError(`unknown job type "${name}"; this engine runs ${JOB_NAMES.join(", ")}`);
    }
    const parsed = payloadSchemas[name].safeParse(job.data);
    if (!parsed.success)
      throw new UnrecoverableError(`invalid ${name} job: ${parsed.error.issues[0]?.message}`);
    const payload = parsed.data as JobPayload<JobName>;
    const jobId = String(job.id);
    const log = this.log.child({ jobId, name, attempt: job.attemptsStarted });
    if ((await this.redis.exists(this.keys.cancel(jobId))) === 1)
      throw new UnrecoverableError(CANCELLED_MESSAGE);
    const pipeline = this.options.pipelines[name] as Pipeline<JobName> | undefined;
    if (!pipeline) {
      throw new UnrecoverableError(
        new UserFacingError(`${name} is not available yet on this engine`).message,
      );
    }
    if (!(await this.acquireSlot(payload.userId, jobId))) {
      // The user already has maxActivePerUser jobs running elsewhere: let other users' jobs go first.
      await job.moveToDelayed(Date.now() + 2_000, token);
      throw new DelayedError();
    }

    const started = performance.now();
    // A run of this job on this worker whose completion BullMQ refused (lock lost) is superseded.
    this.finishing.delete(jobId);
    const abort = signal ?? new AbortController().signal;
    this.running.set(jobId, { userId: payload.userId, jobId });
    this.options.observer?.jobStarted?.(name);
    this.options.observer?.running?.(this.running.size);
    const finish = (outcome: JobOutcome) =>
      this.options.observer?.jobFinished?.(name, outcome, (performance.now() - started) / 1000);
    try {
      if (name === "swap.edit") await this.attachConcept(job, payload as JobPayload<"swap.edit">);
      log.info("job started");
      const reused =
        name === "swap.concept" ? await this.reuseConcept(payload as JobPayload<"swap.concept">) : undefined;
      const result =
        reused ??
        (await pipeline({
          jobId,
          name,
          payload,
          attempt: job.attemptsStarted,
          blobs: this.options.blobs,
          signal: abort,
          progress: this.progressReporter(job, name, abort),
          putBlob: (bytes, kind) =>
            this.options.blobs.put(bytes, { userId: payload.userId, kind, quota: false }),
          log,
        }));
      const checked = resultSchemas[name].safeParse(result);
      if (!checked.success)
        throw new Error(`${name} pipeline returned a malformed result: ${checked.error.message}`);
      if (name === "swap.concept" && this.options.modelId && !reused) {
        const concept = payload as JobPayload<"swap.concept">;
        const { conceptBlobId } = checked.data as JobResult<"swap.concept">;
        await cacheConcept(
          this.redis,
          this.keys,
          concept,
          this.options.modelId,
          conceptBlobId,
          this.options.blobs.limits.ttlSeconds,
        );
      }
      // Counted as completed once BullMQ has recorded it (the "completed" listener): a worker whose lock
      // was lost (event loop blocked past lockDuration) returns here too, but its result is refused.
      this.finishing.set(jobId, { name, started });
      return checked.data;
    } catch (error) {
      if (abort.aborted && abort.reason === LOCK_LOST) {
        finish("handed-back");
        // Without the lock BullMQ can record nothing of this run; its stalled checker moves the job back.
        throw new WaitingError();
      }
      if (abort.aborted && abort.reason === SHUTDOWN && token) {
        finish("handed-back");
        log.info("worker shutting down: job handed back to the queue");
        await job.moveToWait(token);
        throw new WaitingError();
      }
      if (abort.aborted) {
        finish("cancelled");
        log.info("job cancelled");
        // A pipeline's CancelledError says where it stopped ("cancelled at embedding step 12/500").
        throw new UnrecoverableError(error instanceof UserFacingError ? error.message : CANCELLED_MESSAGE);
      }
      finish("failed");
      if (error instanceof UserFacingError) {
        log.info({ reason: error.message }, "job refused");
        throw new UnrecoverableError(error.message);
      }
      // Anything else is a bug or a transient fault: logged with its stack, retried with backoff; the
      // message that the user finally sees names the job, not the internals.
      log.error({ err: error }, "job failed");
      throw new Error(
        `the engine hit an unexpected error on ${name} job ${jobId}; the operators can look it up`,
      );
    } finally {
      this.running.delete(jobId);
      this.options.observer?.running?.(this.running.size);
      // A run that lost its lock leaves the slot to the job's next run, which may have started already.
      if (abort.reason !== LOCK_LOST) await this.redis.zrem(this.keys.userActive(payload.userId), jobId);
    }
  }

  /** A user's running slots live this long unrenewed: their engines' leases, with room to spare. */
  private get slotKeyTtlMs(): number {
    return this.lockDurationMs * 2;
  }

  private async acquireSlot(userId: string, jobId: string): Promise<boolean> {
    const now = Date.now();
    const lease = now + this.lockDurationMs;
    const ok = await this.redis.eval(
      ACQUIRE,
      1,
      this.keys.userActive(userId),
      now,
      lease,
      jobId,
      this.options.maxActivePerUser,
      this.slotKeyTtlMs,
    );
    return ok === 1;
  }

  /** The concept a `swap.concept` request has already learned on this model, if its blob is still kept. */
  private async reuseConcept(p: JobPayload<"swap.concept">): Promise<JobResult<"swap.concept"> | undefined> {
    if (!this.options.modelId) return undefined;
    const id = await cachedConcept(this.redis, this.keys, p, this.options.modelId);
    if (id && (await this.options.blobs.touch([id])).length === 0) return { conceptBlobId: id };
    return undefined;
  }

  /** A swap's concept comes from the payload (cached at enqueue) or from its swap.concept child. */
  private async attachConcept(job: Job, payload: JobPayload<"swap.edit">): Promise<void> {
    if (payload.conceptBlobId) return;
    const values = Object.values(await job.getChildrenValues<JobResult<"swap.concept">>());
    const learned = values.find((v) => typeof v?.conceptBlobId === "string");
    if (!learned)
      throw new UserFacingError("the concept for this swap was not learned; please start the swap again");
    payload.conceptBlobId = learned.conceptBlobId;
  }

  private progressReporter(
    job: Job,
    name: JobName,
    signal: AbortSignal,
  ): (update: ProgressUpdate) => Promise<void> {
    const progressIntervalMs = this.options.progressIntervalMs ?? 1_000;
    const previewIntervalMs = this.options.previewIntervalMs ?? 5_000;
    let lastPublished = Number.NEGATIVE_INFINITY;
    let lastPreview = Number.NEGATIVE_INFINITY;
    let stage = "";
    let stageStart = 0;
    let stageFirstStep = 0;
    let lastStepAt = 0;
    let lastStep = 0;
    return async (update) => {
      signal.throwIfAborted();
      const now = performance.now();
      if (update.stage !== stage) {
        stage = update.stage;
        stageStart = now;
        stageFirstStep = update.step;
      } else if (update.step === lastStep + 1) {
        this.options.observer?.step?.(name, stage, (now - lastStepAt) / 1000);
      }
      lastStepAt = now;
      const stageChanged = stageStart === now;
      lastStep = update.step;
      const done = update.step - stageFirstStep;
      const perStep = done > 0 ? (now - stageStart) / 1000 / done : undefined;
      const due = stageChanged || update.step >= update.total || now - lastPublished >= progressIntervalMs;
      if (!due) return;
      const progress: JobProgress = { stage: update.stage, step: update.step, total: update.total };
      if (perStep !== undefined) progress.etaSeconds = Math.max(0, (update.total - update.step) * perStep);
      if (update.loss !== undefined && Number.isFinite(update.loss)) progress.loss = update.loss;
      if (update.preview && now - lastPreview >= previewIntervalMs) {
        lastPreview = now;
        const bytes = await update.preview();
        progress.previewBlobId = await this.options.blobs.put(bytes, {
          userId: (job.data as { userId: string }).userId,
          kind: "preview",
          quota: false,
          ttlSeconds: PREVIEW_TTL_SECONDS,
        });
      }
      lastPublished = now;
      await job.updateProgress(progress);
    };
  }
}

export async function startWorker(options: StartWorkerOptions): Promise<EngineWorker> {
  const worker = new EngineWorker(options);
  await worker.waitUntilReady();
  return worker;
}
