// At-least-once delivery of finished jobs to a named consumer ("discord", "slack"): the claim that
// says which process posts a job's result, and whether an earlier attempt may have posted part of it.
//
// A claim (LeasedClaims) is taken before the result is posted and confirmed once it has been. A
// process that dies in between stops renewing its lease; any process of the consumer then finds the
// claim among the abandoned ones and delivers the result again, told that it is a redelivery: the chat
// side posts idempotently (Discord's nonce, a Slack message found by its metadata), so the user sees
// the result once.
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

/** A consumer's delivery claims: a "retry" is a redelivery, which the chat side posts idempotently. */
export class DeliveryClaims extends LeasedClaims<DeliveryRef> {
  constructor(redis: Redis, keys: QueueKeys, consumer: string, leaseMs: number) {
    super(
      redis,
      (member) => keys.delivered(`${consumer}:${member}`),
      keys.delivering(consumer),
      leaseMs,
      deliveryRefs,
    );
  }
}
