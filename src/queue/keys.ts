// Redis key names of the queue layer, in one place. BullMQ keeps its own keys under `bull:<queue>:…`;
// ours live under `pe:` so that an operator can tell them apart (and `redis-cli --scan` them).

/** The one BullMQ queue that carries every job type: priorities order them (see client.ts). */
export const QUEUE_NAME = "edits";

const P = "pe";

/** Blobs are content-addressed and shared by every queue on the Redis. */
export const keys = {
  /** Hash { data, kind, size, user } with a TTL: a content-addressed blob. */
  blob: (id: string) => `${P}:blob:${id}`,
  /** Sorted set of `<blobId>:<size>` scored by expiry time (ms): what counts against a user's quota. */
  blobQuota: (userId: string) => `${P}:quota:${userId}`,
};

/**
 * Per-queue bookkeeping. Queues never share it: the queue benchmark runs on its own queue, so its
 * durations, caps and flags never mix with a live one on the same Redis.
 */
export function queueKeys(queue: string = QUEUE_NAME) {
  const q = `${P}:${queue}`;
  return {
    /** Every key below starts with this. */
    prefix: `${q}:`,
    /** Sorted set of job ids a user has in flight, scored by enqueue time. */
    userJobs: (userId: string) => `${q}:user-jobs:${userId}`,
    /** Sorted set of job ids a user has running, scored by lease expiry (ms); see worker.ts. */
    userActive: (userId: string) => `${q}:user-active:${userId}`,
    /** Set by a cancel request; the worker turns it into an abort of the running job. */
    cancel: (jobId: string) => `${q}:cancel:${jobId}`,
    /**
     * Per consumer and job: `pending:<process>` while a process posts the result, `done` once it has
     * (delivery.ts).
     */
    delivered: (jobRef: string) => `${q}:delivered:${jobRef}`,
    /** Per consumer and job: how many tries of a delivery failed for now (the platform down); delivery.ts. */
    deliveryFailures: (jobRef: string) => `${q}:delivery-failures:${jobRef}`,
    /** Sorted set of a consumer's unconfirmed deliveries (`<job>:<created>`), scored by lease expiry (ms). */
    delivering: (consumer: string) => `${q}:delivering:${consumer}`,
    /** Last QueueEvents stream id a consumer has handled, so a restarted bot replays what it missed. */
    eventCursor: (consumer: string) => `${q}:events-cursor:${consumer}`,
    /** List of recent job durations (seconds) per job name, newest first, for ETAs. */
    durations: (name: string) => `${q}:durations:${name}`,
    /** Concept cache: hash of (references, subject, options) → concept blob id. */
    concept: (key: string) => `${q}:concept:${key}`,
  };
}

export type QueueKeys = ReturnType<typeof queueKeys>;
