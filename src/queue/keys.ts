// Redis key names of the queue layer, in one place. BullMQ keeps its own keys under `bull:<queue>:…`;
// ours live under `pe:` so that an operator can tell them apart (and `redis-cli --scan` them).

/** The one BullMQ queue that carries every job type: priorities order them (see client.ts). */
export const QUEUE_NAME = "edits";

const P = "pe";

export const keys = {
  /** Hash { data, kind, size, user } with a TTL: a content-addressed blob. */
  blob: (id: string) => `${P}:blob:${id}`,
  /** Sorted set of `<blobId>:<size>` scored by expiry time (ms): what counts against a user's quota. */
  blobQuota: (userId: string) => `${P}:quota:${userId}`,
  /** Sorted set of job ids a user has in flight, scored by enqueue time. */
  userJobs: (userId: string) => `${P}:user-jobs:${userId}`,
  /** Sorted set of job ids a user has running, scored by lock-expiry time (ms); see worker.ts. */
  userActive: (userId: string) => `${P}:user-active:${userId}`,
  /** String set by a cancel request; the worker turns it into an abort of the running job. */
  cancel: (jobId: string) => `${P}:cancel:${jobId}`,
  /** Per consumer and job, set once by the process that posts the job's result (client.ts claimDelivery). */
  delivered: (jobRef: string) => `${P}:delivered:${jobRef}`,
  /** Last QueueEvents stream id a consumer has handled, so a restarted bot replays what it missed. */
  eventCursor: (consumer: string) => `${P}:events-cursor:${consumer}`,
  /** List of recent job durations (seconds) per job name, newest first, for ETAs. */
  durations: (name: string) => `${P}:durations:${name}`,
  /** Concept cache: hash of (references, subject, options) → concept blob id. */
  concept: (key: string) => `${P}:concept:${key}`,
};
