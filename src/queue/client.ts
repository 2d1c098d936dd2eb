// The bots' side of the queue: validate and enqueue jobs, look up positions, cancel, and listen to
// progress/results (BullMQ Queue, FlowProducer and QueueEvents on one Redis).
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { FlowProducer, Job, Queue, QueueEvents } from "bullmq";
import { Redis, ReplyError } from "ioredis";
import type { z } from "zod";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import type { BlobStore } from "./blobs.js";
import { cachedConcept } from "./concepts.js";
import {
  DELIVERY_RETRY,
  DeliverLaterError,
  DeliveryClaims,
  type DeliveryRef,
  type DeliveryRetry,
  deliveryRefs,
  retryDelayMs,
} from "./delivery.js";
import { typicalDurations } from "./durations.js";
import {
  type ChatOrigin,
  isJobName,
  JOB_NAMES,
  type JobName,
  type JobPayload,
  type JobProgress,
  type JobResult,
  MAX_PAYLOAD_BYTES,
  payloadSchemas,
  referencedBlobs,
} from "./jobs.js";
import { QUEUE_NAME, type QueueKeys, queueKeys } from "./keys.js";
import { sweepAbandoned, type TakeOutcome } from "./leased-claims.js";
import { bandScores, priorityFor } from "./priority.js";
import { MAX_STALLED_COUNT } from "./worker.js";

const log = childLogger("queue");

export interface UserLimits {
  /** Jobs one user may have in the queue at once, waiting or running. */
  maxQueued: number;
}

export interface QueueClientOptions {
  redisUrl: string;
  blobs: BlobStore;
  limits: UserLimits;
  /**
   * Names this consumer of results ("discord", "slack"). With a name, events resume after a restart
   * from the last one handled, and `completed`/`failed` are delivered to one process of that name at a
   * time, again after a crash until one confirms it (delivery.ts). Without one, events start from now
   * and each client emits all.
   */
  consumer?: string;
  /**
   * How long a named consumer's process may go without renewing its claim on a result it delivers before
   * another process (or itself, restarted) delivers it again (default 30 s). Renewed every third of it.
   */
  deliveryLeaseMs?: number;
  /**
   * When a named consumer delivers again a result whose listener threw DeliverLaterError (its chat
   * platform down), and when it gives up (DELIVERY_RETRY: doubling from 5 s to 10 minutes, about 6 hours).
   */
  deliveryRetry?: DeliveryRetry;
  /** Only emit events of jobs that came from this chat platform. */
  platform?: ChatOrigin["platform"];
  /** The BullMQ queue (default "edits"; the benchmark uses its own). */
  queueName?: string;
  /** Runs per job for transient faults, with exponential backoff from backoffMs. Default 3, 5 s. */
  retry?: { attempts: number; backoffMs: number };
  /**
   * The model the engines run (its identity, spec/model.ts): a swap whose concept is cached for it skips concept learning.
   * Unset, every swap enqueues its concept job (which an engine then answers from the cache if it can).
   */
  model?: string;
}

export type JobStateName =
  | "waiting"
  | "waiting-for-concept"
  | "delayed"
  | "active"
  | "completed"
  | "failed"
  | "unknown";

export interface JobPosition {
  jobId: string;
  name: JobName;
  state: JobStateName;
  /** 1 = next to run; 0 = running; undefined when it does not apply (finished, delayed). */
  position?: number;
  /** Estimated seconds until the job finishes, from recent job durations; undefined when unknown. */
  etaSeconds?: number;
}

export interface EnqueueResult {
  jobId: string;
  position: JobPosition;
}

interface JobEventBase<N extends JobName = JobName> {
  jobId: string;
  name: N;
  data: JobPayload<N>;
}

/** A job's end as a named consumer gets it. */
interface JobEndBase extends JobEventBase {
  /**
   * An earlier delivery of this result was claimed and never confirmed (its process died mid-post):
   * some of it may be out already, so post it idempotently.
   */
  redelivery: boolean;
}

/**
 * A `completed` or `failed` listener of a named consumer may return a promise: the delivery is confirmed
 * once every listener's promise has settled, and delivered again (`redelivery`) if the process dies first,
 * or later if a listener's promise rejects with DeliverLaterError.
 */
export interface QueueClientEvents {
  progress: [JobEventBase & { progress: JobProgress }];
  completed: [JobEndBase & { result: JobResult<JobName> }];
  /** The job will not run again; `message` is fit to show the user. */
  failed: [JobEndBase & { message: string; cancelled: boolean }];
}

/** What job.data holds: the validated payload. */
type AnyPayload = JobPayload<JobName>;

const KEEP = {
  removeOnComplete: { age: 7 * 86_400, count: 5_000 },
  removeOnFail: { age: 7 * 86_400, count: 5_000 },
};
/** A cancel flag outlives any job run. */
const CANCEL_TTL_SECONDS = 86_400;
/** A reservation that an enqueue left behind when it crashed is ignored after this. */
const RESERVATION_MS = 60_000;
const WORKER_COUNT_CACHE_MS = 5_000;
/** Waits between tries of an event whose handling failed: doubling from `first` up to `max` (ms). */
const EVENT_RETRY_MS = { first: 250, max: 30_000 };
/** BullMQ's failedReason for a job whose worker died holding it more than maxStalledCount times. */
const STALLED_TOO_OFTEN = "job stalled more than allowable limit";

/** An error Redis gave (an error reply, or none before ioredis gave up retrying): worth trying again. */
function failedInRedis(err: unknown): boolean {
  return err instanceof ReplyError || (err instanceof Error && err.name === "MaxRetriesPerRequestError");
}

function describeZodError(name: string, error: z.ZodError): string {
  const issues = error.issues.slice(0, 3).map((issue) => {
    const where = issue.path.length > 0 ? issue.path.join(".") : "request";
    return `${where}: ${issue.message}`;
  });
  const more = error.issues.length > 3 ? ` (and ${error.issues.length - 3} more)` : "";
  return `invalid ${name} request: ${issues.join("; ")}${more}`;
}

/** Validates a payload as enqueue does (size, schema); throws UserFacingError. */
export function parsePayload<N extends JobName>(
  name: string,
  input: unknown,
): { name: N; payload: JobPayload<N> } {
  if (!isJobName(name)) {
    throw new UserFacingError(`unknown job type "${name}"; the engine runs ${JOB_NAMES.join(", ")}`);
  }
  const size = Buffer.byteLength(JSON.stringify(input ?? null));
  if (size > MAX_PAYLOAD_BYTES) {
    throw new UserFacingError(
      `the ${name} request is ${(size / 1024).toFixed(1)} KiB; the limit is ${MAX_PAYLOAD_BYTES / 1024} KiB ` +
        "(images travel as uploaded files, not inside the request)",
    );
  }
  const parsed = payloadSchemas[name].safeParse(input);
  if (!parsed.success) throw new UserFacingError(describeZodError(name, parsed.error));
  return { name: name as N, payload: parsed.data as JobPayload<N> };
}

export class QueueClient {
  readonly queue: Queue;
  readonly blobs: BlobStore;
  readonly events = new EventEmitter<QueueClientEvents>();
  private readonly redis: Redis;
  private readonly flows: FlowProducer;
  private queueEvents: QueueEvents | undefined;
  /** The queue events being handled, one after another (see listen). */
  private eventChain: Promise<void> = Promise.resolve();
  private readonly keys: QueueKeys;
  private workers: { count: number; at: number } | undefined;
  private readonly queueName: string;
  private readonly claims: DeliveryClaims | undefined;
  /** Deliveries under way in this process (by their member, deliveryRefs), each settling once confirmed. */
  private readonly delivering = new Map<string, Promise<void>>();
  /** Looks for abandoned deliveries while listening. */
  private sweeper: NodeJS.Timeout | undefined;
  /** Aborted when this client stops listening: an event handler trying a failed event again stops. */
  private listening: AbortController | undefined;

  constructor(private readonly options: QueueClientOptions) {
    this.redis = new Redis(options.redisUrl, { maxRetriesPerRequest: null });
    this.redis.on("error", (err) => log.warn({ err: err.message }, "redis connection error (reconnecting)"));
    this.queueName = options.queueName ?? QUEUE_NAME;
    this.keys = queueKeys(this.queueName);
    this.queue = new Queue(this.queueName, { connection: { url: options.redisUrl } });
    this.flows = new FlowProducer({ connection: { url: options.redisUrl } });
    this.blobs = options.blobs;
    this.claims = options.consumer
      ? new DeliveryClaims(this.redis, this.keys, options.consumer, options.deliveryLeaseMs ?? 30_000)
      : undefined;
  }

  /**
   * Validates and enqueues a job. Throws UserFacingError (unknown type, bad or oversized payload,
   * expired blob, user over the cap) with a message for the user; nothing is enqueued then.
   *
   * With a `jobId` the enqueue is idempotent: when a job of that id exists already (an earlier attempt
   * that died before it could say so), that job is the answer and nothing is added.
   */
  async enqueue<N extends JobName>(
    name: N | string,
    input: unknown,
    { jobId: fixedId }: { jobId?: string } = {},
  ): Promise<EnqueueResult> {
    if (fixedId && (await this.queue.getJob(fixedId))) {
      log.info({ jobId: fixedId, name }, "job enqueued already");
      return { jobId: fixedId, position: await this.position(fixedId) };
    }
    const parsed = parsePayload<N>(name, input);
    const payload = parsed.payload as AnyPayload;
    const refs = referencedBlobs(parsed.name, parsed.payload);
    const missing = new Set(await this.blobs.touch(refs.map((r) => r.id)));
    const expired = refs.find((r) => missing.has(r.id));
    if (expired) throw this.blobs.expired(expired.label);

    const userKey = this.keys.userJobs(payload.userId);
    const reservation = `reserved:${randomUUID()}`;
    await this.redis.zadd(userKey, Date.now(), reservation);
    try {
      const inFlight = await this.userJobsInFlight(payload.userId);
      if (inFlight.length > this.options.limits.maxQueued) throw this.queueFull(inFlight.length - 1);
      const waiting = inFlight.filter((j) => j.state !== "active").length - 1;
      const jobId = await this.add(parsed.name, payload, waiting, fixedId);
      await this.redis.multi().zrem(userKey, reservation).zadd(userKey, Date.now(), jobId).exec();
      log.info({ jobId, name: parsed.name, userId: payload.userId }, "job enqueued");
      return { jobId, position: await this.position(jobId) };
    } finally {
      await this.redis.zrem(userKey, reservation);
    }
  }

  /**
   * Refuses, as `enqueue` would, a user who has as many jobs in the queue as they may: a command checks
   * this before it stores its photos, which would otherwise count against the user's upload quota for a
   * job that is never queued. (`enqueue` still decides: another command may take the last place first.)
   */
  async checkRoom(userId: string): Promise<void> {
    const inFlight = await this.userJobsInFlight(userId);
    if (inFlight.length >= this.options.limits.maxQueued) throw this.queueFull(inFlight.length);
  }

  private queueFull(queued: number): UserFacingError {
    return new UserFacingError(
      `you already have ${queued} job${queued === 1 ? "" : "s"} in the queue, the limit is ${this.options.limits.maxQueued}; ` +
        "wait for one to finish or cancel one",
    );
  }

  private async add(
    name: JobName,
    payload: AnyPayload,
    waitingOfUser: number,
    jobId: string | undefined,
  ): Promise<string> {
    const { attempts, backoffMs } = this.options.retry ?? { attempts: 3, backoffMs: 5_000 };
    const retry = { attempts, backoff: { type: "exponential", delay: backoffMs } };
    // BullMQ adds nothing under an id it holds already, so a fixed id is taken once even in a race.
    const opts = {
      ...retry,
      ...KEEP,
      priority: priorityFor(name, waitingOfUser),
      ...(jobId ? { jobId } : {}),
    };
    if (name === "swap.edit") {
      const edit = payload as JobPayload<"swap.edit">;
      const concept = {
        referenceBlobIds: edit.referenceBlobIds,
        subject: edit.subject,
        options: edit.conceptOptions,
      };
      if (!edit.conceptBlobId && this.options.model) {
        const cached = await cachedConcept(this.redis, this.keys, concept, this.options.model);
        if (cached && (await this.blobs.touch([cached])).length === 0) edit.conceptBlobId = cached;
      }
      if (!edit.conceptBlobId) {
        // The swap waits (BullMQ state waiting-children) for its concept child and reads its result.
        const node = await this.flows.add({
          name,
          queueName: this.queueName,
          data: edit,
          opts,
          children: [
            {
              name: "swap.concept",
              queueName: this.queueName,
              data: {
                userId: edit.userId,
                origin: edit.origin,
                ...concept,
              } satisfies JobPayload<"swap.concept">,
              opts: {
                ...retry,
                ...KEEP,
                priority: priorityFor("swap.concept", waitingOfUser),
                failParentOnFailure: true,
              },
            },
          ],
        });
        return String(node.job.id);
      }
    }
    const job = await this.queue.add(name, payload, opts);
    return String(job.id);
  }

  /** The user's unfinished jobs (and pending reservations) with their states; drops finished ones. */
  private async userJobsInFlight(userId: string): Promise<Array<{ jobId: string; state: string }>> {
    const userKey = this.keys.userJobs(userId);
    const members = await this.redis.zrange(userKey, 0, "-1", "WITHSCORES");
    const out: Array<{ jobId: string; state: string }> = [];
    const stale: string[] = [];
    const entries: Array<{ jobId: string; since: number }> = [];
    for (let i = 0; i < members.length; i += 2)
      entries.push({ jobId: members[i] as string, since: Number(members[i + 1]) });
    const states = await Promise.all(
      entries.map(({ jobId }) =>
        jobId.startsWith("reserved:") ? "reserved" : this.queue.getJobState(jobId),
      ),
    );
    entries.forEach(({ jobId, since }, i) => {
      const state = states[i] as string;
      const finished = state === "completed" || state === "failed" || state === "unknown";
      const abandoned = state === "reserved" && Date.now() - since > RESERVATION_MS;
      if (finished || abandoned) stale.push(jobId);
      else out.push({ jobId, state });
    });
    if (stale.length > 0) await this.redis.zrem(userKey, ...stale);
    return out;
  }

  /** Where a job stands: state, place in line (1 = next) and an ETA from recent job durations. */
  async position(jobId: string): Promise<JobPosition> {
    const job = await this.queue.getJob(jobId);
    if (!job || !isJobName(job.name)) return { jobId, name: "imagic.train", state: "unknown" };
    const name = job.name;
    const state = await job.getState();
    const durations = await typicalDurations(this.redis, this.keys);
    switch (state) {
      case "completed":
      case "failed":
        return { jobId, name, state };
      case "active": {
        const reported = (job.progress as Partial<JobProgress> | undefined)?.etaSeconds;
        const elapsed = (Date.now() - (job.processedOn ?? Date.now())) / 1000;
        return {
          jobId,
          name,
          state,
          position: 0,
          etaSeconds: reported ?? Math.max(1, durations[name] - elapsed),
        };
      }
      case "waiting":
      case "prioritized": {
        const [ahead, workers, running] = await Promise.all([
          this.jobsAhead(jobId),
          this.workerCount(),
          this.remainingOfActive(durations),
        ]);
        const queued = JOB_NAMES.reduce((sum, n) => sum + ahead[n] * durations[n], 0);
        const count = JOB_NAMES.reduce((sum, n) => sum + ahead[n], 0);
        return {
          jobId,
          name,
          state: "waiting",
          position: count + 1,
          etaSeconds: (queued + running) / workers + durations[name],
        };
      }
      case "waiting-children": {
        const deps = await job.getDependencies({ unprocessed: { count: 1 } });
        const childKey = deps.unprocessed?.[0];
        const childId = childKey?.slice(childKey.lastIndexOf(":") + 1);
        const child = childId ? await this.position(childId) : undefined;
        const etaSeconds = child?.etaSeconds === undefined ? undefined : child.etaSeconds + durations[name];
        return { jobId, name, state: "waiting-for-concept", position: child?.position, etaSeconds };
      }
      default:
        return { jobId, name, state: state === "delayed" ? "delayed" : "unknown" };
    }
  }

  /** Per job type, how many jobs run before this one (the waiting list first, then by priority). */
  private async jobsAhead(jobId: string): Promise<Record<JobName, number>> {
    const key = this.queue.keys.prioritized as string;
    const [plain, score] = await Promise.all([
      this.redis.lrange(this.queue.keys.wait as string, 0, -1),
      this.redis.zscore(key, jobId),
    ]);
    const ahead = Object.fromEntries(JOB_NAMES.map((n) => [n, 0])) as Record<JobName, number>;
    // Priority bands are per type (priority.ts): one ZCOUNT per type, however long the queue.
    if (score !== null) {
      const pipeline = this.redis.pipeline();
      for (const name of JOB_NAMES) {
        const band = bandScores(name);
        pipeline.zcount(key, band.min, `(${Math.min(band.max, Number(score))}`);
      }
      const counts = (await pipeline.exec()) ?? [];
      JOB_NAMES.forEach((name, i) => {
        ahead[name] += Number(counts[i]?.[1] ?? 0);
      });
    }
    // Jobs without a priority (none that enqueue adds) would run first; there are few if any.
    const others = plain.filter((id) => id !== jobId);
    if (others.length > 0) {
      const names = await Promise.all(others.map((id) => this.redis.hget(this.queue.toKey(id), "name")));
      for (const n of names) if (n && isJobName(n)) ahead[n] += 1;
    }
    return ahead;
  }

  /** Engines taking jobs (CLIENT LIST, so cached for a few seconds), at least 1 for the estimate. */
  private async workerCount(): Promise<number> {
    if (!this.workers || Date.now() - this.workers.at > WORKER_COUNT_CACHE_MS) {
      this.workers = { count: await this.queue.getWorkersCount(), at: Date.now() };
    }
    return Math.max(1, this.workers.count);
  }

  private async remainingOfActive(durations: Record<JobName, number>): Promise<number> {
    const active = await this.queue.getActive();
    return active.reduce((sum, job) => {
      if (!isJobName(job.name)) return sum;
      const elapsed = (Date.now() - (job.processedOn ?? Date.now())) / 1000;
      return sum + Math.max(0, durations[job.name] - elapsed);
    }, 0);
  }

  /**
   * Cancels a job of this user. A job that has not started is removed; a running one gets a cancel
   * flag that its worker turns into an abort between steps (it then fails as "cancelled").
   */
  async cancel(jobId: string, userId: string): Promise<"removed" | "cancelling" | "finished"> {
    const job = await this.queue.getJob(jobId);
    if (!job) throw new UserFacingError(`there is no job ${jobId} (finished jobs are kept 7 days)`);
    if ((job.data as AnyPayload).userId !== userId)
      throw new UserFacingError(`job ${jobId} is not yours to cancel`);
    const state = await job.getState();
    if (state === "completed" || state === "failed") return "finished";
    // Flag first: if the job starts between the flag and the removal, its worker sees the flag.
    const ids = [jobId, ...(await this.childIds(job))];
    await Promise.all(
      ids.map((id) => this.redis.set(this.keys.cancel(id), userId, "EX", CANCEL_TTL_SECONDS)),
    );
    if (state !== "active") {
      try {
        await job.remove({ removeChildren: true });
        await this.redis.zrem(this.keys.userJobs(userId), jobId);
        log.info({ jobId }, "waiting job removed");
        return "removed";
      } catch (error) {
        // A job (or its concept child) that a worker has locked cannot be removed: the flag stops it.
        log.debug({ err: error, jobId }, "job is locked; it will be cancelled by its worker");
      }
    }
    log.info({ jobId }, "running job flagged for cancellation");
    return "cancelling";
  }

  private async childIds(job: Job): Promise<string[]> {
    const deps = await job.getDependencies();
    const childKeys = [...(deps.unprocessed ?? []), ...Object.keys(deps.processed ?? {})];
    return childKeys.map((key) => key.slice(key.lastIndexOf(":") + 1));
  }

  /** The user's unfinished jobs, oldest first, with positions. */
  async listForUser(userId: string): Promise<JobPosition[]> {
    const jobs = await this.userJobsInFlight(userId);
    const real = jobs.filter((j) => !j.jobId.startsWith("reserved:"));
    return Promise.all(real.map((j) => this.position(j.jobId)));
  }

  /** Starts emitting `events` (BullMQ QueueEvents); resumes from the consumer's cursor when named. */
  async listen(): Promise<void> {
    if (this.queueEvents) return;
    const consumer = this.options.consumer;
    const lastEventId = consumer
      ? ((await this.redis.get(this.keys.eventCursor(consumer))) ?? undefined)
      : undefined;
    const queueEvents = new QueueEvents(this.queueName, {
      connection: { url: this.options.redisUrl },
      ...(lastEventId ? { lastEventId } : {}),
    });
    this.queueEvents = queueEvents;
    const listening = new AbortController();
    this.listening = listening;
    // Events are handled one after another so that the cursor only moves past handled ones. One whose
    // handling Redis failed (away, or refusing writes at its maxmemory) is tried again, not skipped: the
    // next event would move the cursor past it, and its result would be posted by nobody, ever. Any
    // other fault (a listener's) would fail every try and hold up every event behind it: it is logged
    // and skipped. Once this client stops listening, a failed event and those behind it are left to the
    // next listen(), which replays them.
    let givenUp = false;
    const handle = (eventId: string, work: () => Promise<void>) => {
      this.eventChain = this.eventChain.then(async () => {
        for (
          let delayMs = EVENT_RETRY_MS.first;
          !givenUp;
          delayMs = Math.min(2 * delayMs, EVENT_RETRY_MS.max)
        ) {
          try {
            await work();
            if (consumer) await this.redis.set(this.keys.eventCursor(consumer), eventId);
            return;
          } catch (err) {
            if (!failedInRedis(err)) {
              log.error({ err, eventId }, "queue event handler failed");
              return;
            }
            log.error({ err, eventId }, "queue event handler failed in Redis; it is tried again");
            if (listening.signal.aborted) givenUp = true;
            else await sleep(delayMs, undefined, { signal: listening.signal }).catch(() => undefined);
          }
        }
      });
    };
    queueEvents.on("progress", ({ jobId, data }, id) =>
      handle(id, async () => {
        const job = await this.jobForEvent(jobId, "progress");
        if (job) this.events.emit("progress", { ...job, progress: data as JobProgress });
      }),
    );
    queueEvents.on("completed", ({ jobId }, id) => handle(id, () => this.deliverEnd(jobId, "completed")));
    queueEvents.on("failed", ({ jobId }, id) => handle(id, () => this.deliverEnd(jobId, "failed")));
    await queueEvents.waitUntilReady();
    if (this.claims) {
      this.sweeper = sweepAbandoned(
        this.claims.leaseMs,
        () => this.redeliverAbandoned(),
        (err) => log.warn({ err }, "looking for abandoned result deliveries failed"),
      );
    }
  }

  /**
   * Delivers a finished job's end (its result, or why it failed) if this process wins the claim. The
   * delivery runs on its own: the events behind it need not wait for a result to be posted.
   */
  private async deliverEnd(jobId: string, ended: "completed" | "failed", only?: TakeOutcome): Promise<void> {
    const job = await Job.fromId(this.queue, jobId);
    const event = job ? await this.jobEvent(job, "end") : undefined;
    if (!job || !event) return;
    const ref: DeliveryRef = { jobId, createdAt: String(job.timestamp) };
    const claim = this.claims ? await this.claims.take(ref) : "first";
    if (!claim || (only && claim !== only)) return;
    const redelivery = claim === "retry";
    if (redelivery) log.info({ jobId }, "delivering a result again: its first delivery was never confirmed");
    const end =
      ended === "failed"
        ? {
            name: "failed" as const,
            event: {
              ...event,
              redelivery,
              message: await this.failureMessage(jobId, job.failedReason ?? "failed"),
              cancelled: (await this.redis.exists(this.keys.cancel(jobId))) === 1,
            },
          }
        : {
            name: "completed" as const,
            event: { ...event, redelivery, result: job.returnvalue as JobResult<JobName> },
          };
    const member = deliveryRefs.encode(ref);
    const delivery = this.deliver(ref, end)
      // Redis failed to confirm or put it off: the claim's lease runs out and the sweep delivers it again.
      .catch((err: unknown) => log.warn({ err, jobId }, "could not settle a delivery's claim"))
      .finally(() => this.delivering.delete(member));
    this.delivering.set(member, delivery);
  }

  /**
   * Calls the listeners, renewing the claim while their promises run, and confirms it once they have
   * settled: a listener's failure is logged (a post refused for good is not retried), a crash is not. A
   * listener that can deliver only later (DeliverLaterError) leaves the claim unconfirmed.
   */
  private async deliver(
    ref: DeliveryRef,
    end:
      | { name: "completed"; event: QueueClientEvents["completed"][0] }
      | { name: "failed"; event: QueueClientEvents["failed"][0] },
  ): Promise<void> {
    const run = async () => {
      const listeners = this.events.listeners(end.name) as Array<(event: typeof end.event) => unknown>;
      const outcomes = await Promise.allSettled(listeners.map(async (listener) => listener(end.event)));
      return outcomes.flatMap((outcome) =>
        outcome.status === "rejected" ? [outcome.reason as unknown] : [],
      );
    };
    const claims = this.claims;
    const failures = claims
      ? await claims.whileHeld(ref, run, (err) =>
          log.warn({ err, jobId: ref.jobId }, "could not renew a delivery claim"),
        )
      : await run();
    const later = claims ? failures.find((err) => err instanceof DeliverLaterError) : undefined;
    for (const err of failures)
      if (err !== later) log.error({ err, jobId: ref.jobId }, `${end.name} listener failed`);
    if (!claims) return;
    if (later) await this.deliverLater(claims, ref, later);
    else await claims.confirm(ref);
  }

  /**
   * Puts a delivery off: its claim stays pending, under a lease that runs out after a delay doubling with
   * each failed try, and then the sweep for abandoned deliveries (any process's) delivers it again as a
   * redelivery. The lease, not a timer of this process, so that the result survives a restart meanwhile.
   * Once the tries are used up the result is given up, confirmed, with an error logged.
   */
  private async deliverLater(claims: DeliveryClaims, ref: DeliveryRef, err: unknown): Promise<void> {
    const failed = await claims.failedTry(ref);
    const delayMs = retryDelayMs(this.options.deliveryRetry ?? DELIVERY_RETRY, failed);
    if (delayMs === undefined) {
      log.error({ err, jobId: ref.jobId, tries: failed }, "could not deliver a result in any try: given up");
      await claims.confirm(ref);
      return;
    }
    log.warn(
      { err, jobId: ref.jobId, tries: failed, delayMs },
      "could not deliver a result now: trying again later",
    );
    await claims.renew(ref, delayMs);
  }

  /** Delivers again the results whose delivering process died before it confirmed them. */
  private async redeliverAbandoned(): Promise<void> {
    if (!this.claims) return;
    for (const ref of await this.claims.abandoned()) {
      if (this.delivering.has(deliveryRefs.encode(ref))) continue;
      const job = await Job.fromId(this.queue, ref.jobId);
      const state = job && String(job.timestamp) === ref.createdAt ? await job.getState() : undefined;
      if (state !== "completed" && state !== "failed") {
        await this.claims.drop(ref);
        continue;
      }
      await this.deliverEnd(ref.jobId, state, "retry");
    }
  }

  /**
   * The reason a job failed, in words for its user. A flow parent fails with "child bull:edits:7 failed":
   * the user gets the child's own reason. BullMQ's own reason for a job whose engine died under it too
   * often means nothing to a chat user.
   */
  private async failureMessage(jobId: string, reason: string): Promise<string> {
    if (reason === STALLED_TOO_OFTEN) {
      return (
        "the engine stopped (it crashed, ran out of memory or stopped responding) each of the " +
        `${MAX_STALLED_COUNT + 1} times it ran job ${jobId}, so it is not tried again; try a smaller photo or a ` +
        "lighter preset, or ask the operators"
      );
    }
    const child = /^child (\S+) failed$/.exec(reason)?.[1];
    if (!child) return reason;
    const childReason = await this.redis.hget(child, "failedReason");
    return childReason ? await this.failureMessage(jobId, childReason) : reason;
  }

  /**
   * The job an event is about, as the bots know it: a flow's swap.concept child reports its progress
   * as its swap.edit parent (the id the user got), and its end is told by the parent's end.
   */
  private async jobForEvent(jobId: string, kind: "progress" | "end"): Promise<JobEventBase | undefined> {
    const job = await Job.fromId(this.queue, jobId);
    return job ? this.jobEvent(job, kind) : undefined;
  }

  private async jobEvent(found: Job, kind: "progress" | "end"): Promise<JobEventBase | undefined> {
    let job: Job | undefined = found;
    const parentId = job.parent?.id;
    if (parentId) {
      if (kind === "end") return undefined;
      job = await Job.fromId(this.queue, parentId);
    }
    if (!job || !isJobName(job.name)) return undefined;
    const data = job.data as AnyPayload;
    if (this.options.platform && data.origin.platform !== this.options.platform) return undefined;
    return { jobId: String(job.id), name: job.name, data };
  }

  /**
   * Stops emitting events and waits for the ones under way: a bot that stops calls this before it
   * lets go of its listeners, or an event read meanwhile would be claimed, its cursor moved past, and
   * nobody told (found by the chaos run). listen() starts again from the cursor.
   */
  async unlisten(): Promise<void> {
    const queueEvents = this.queueEvents;
    this.queueEvents = undefined;
    this.listening?.abort();
    clearInterval(this.sweeper);
    await queueEvents?.close();
    await this.eventChain;
    await Promise.all(this.delivering.values());
  }

  async close(): Promise<void> {
    this.listening?.abort();
    clearInterval(this.sweeper);
    await this.queueEvents?.close();
    await Promise.all(this.delivering.values());
    await Promise.all([this.queue.close(), this.flows.close()]);
    this.redis.disconnect();
  }
}
