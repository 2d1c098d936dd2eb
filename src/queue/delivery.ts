// At-least-once delivery of finished jobs to a named consumer ("discord", "slack"): the claim that
// says which process posts a job's result, and whether an earlier attempt may have posted part of it.
//
// A claim (LeasedClaims) is taken before the result is posted and confirmed once it has been. A
// process that dies in between stops renewing its lease; any process of the consumer then finds the
// claim among the abandoned ones and delivers the result again, told that it is a redelivery: the chat
// side posts idempotently (Discord's nonce, a Slack message found by its metadata), so the user sees
// the result once.
//
// A listener that could not deliver now but may later (its chat platform is down) throws DeliverLaterError:
// its process then leaves the claim pending under a lease that runs out after a growing delay, and the same
// sweep that finds abandoned claims delivers it again, as a redelivery, once that has passed.
import type { Redis } from "ioredis";
import type { QueueKeys } from "./keys.js";
import { LeasedClaims, pairCodec } from "./leased-claims.js";

/** One job's delivery: the job and its creation time (ids start again at 1 if a queue is obliterated). */
export interface DeliveryRef {
  jobId: string;
  createdAt: string;
}

/** A delivery's member, `<jobId>:<createdAt>` (the creation time, a number, holds no ':'). */
export const deliveryRefs = pairCodec<DeliveryRef>(
  ({ jobId, createdAt }) => [jobId, createdAt],
  (jobId, createdAt) => ({ jobId, createdAt }),
);

/**
 * Thrown by a `completed`/`failed` listener that could not deliver the result now but may later (its chat
 * platform is down): the delivery is not confirmed, and is made again later. The queue defines it rather
 * than the chat layer so that the queue knows no chat platform: the commands layer, which knows both,
 * turns its adapters' PlatformUnavailableError into this.
 */
export class DeliverLaterError extends Error {
  override name = "DeliverLaterError";
}

/** When a delivery that failed with DeliverLaterError is made again: `tries` in all, doubling delays. */
export interface DeliveryRetry {
  /** The wait after the first failed try (ms). */
  firstDelayMs: number;
  /** The longest wait between two tries (ms). */
  maxDelayMs: number;
  /** Tries in all, the first included; then the result is given up, with an error logged. */
  tries: number;
}

/** 5 s, 10 s… up to 10 minutes: 40 tries span about 6 hours, longer than a chat platform's usual outage. */
export const DELIVERY_RETRY: DeliveryRetry = { firstDelayMs: 5_000, maxDelayMs: 600_000, tries: 40 };

/** The wait after the `failed`-th failed try (1-based), or undefined once the tries are used up. */
export function retryDelayMs({ firstDelayMs, maxDelayMs, tries }: DeliveryRetry, failed: number) {
  return failed >= tries ? undefined : Math.min(firstDelayMs * 2 ** (failed - 1), maxDelayMs);
}

/** How long a delivery's count of failed tries is kept: longer than all its tries take. */
const FAILED_TRIES_TTL_SECONDS = 86_400;

/** A consumer's delivery claims: a "retry" is a redelivery, which the chat side posts idempotently. */
export class DeliveryClaims extends LeasedClaims<DeliveryRef> {
  private readonly failedKey: (member: string) => string;

  constructor(redis: Redis, keys: QueueKeys, consumer: string, leaseMs: number) {
    super(
      redis,
      (member) => keys.delivered(`${consumer}:${member}`),
      keys.delivering(consumer),
      leaseMs,
      deliveryRefs,
    );
    this.failedKey = (member) => keys.deliveryFailures(`${consumer}:${member}`);
  }

  /** Counts a try of this delivery that failed for now (DeliverLaterError): how many have, this one included. */
  async failedTry(ref: DeliveryRef): Promise<number> {
    const key = this.failedKey(this.refs.encode(ref));
    const replies = await this.redis.multi().incr(key).expire(key, FAILED_TRIES_TTL_SECONDS).exec();
    return Number(replies?.[0]?.[1]);
  }
}
