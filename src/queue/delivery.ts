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
import { LeasedClaims } from "./leased-claims.js";

/** One job's delivery: the job and its creation time (ids start again at 1 if a queue is obliterated). */
export interface DeliveryRef {
  jobId: string;
  createdAt: string;
}

export type ClaimOutcome = "first" | "redelivery" | undefined;

export class DeliveryClaims {
  private readonly claims: LeasedClaims;

  constructor(redis: Redis, keys: QueueKeys, consumer: string, leaseMs: number) {
    this.claims = new LeasedClaims(
      redis,
      (member) => keys.delivered(`${consumer}:${member}`),
      keys.delivering(consumer),
      leaseMs,
    );
  }

  get leaseMs(): number {
    return this.claims.leaseMs;
  }

  /** Job ids never hold ':' (BullMQ refuses them), so the member splits back at its last one. */
  static member({ jobId, createdAt }: DeliveryRef): string {
    return `${jobId}:${createdAt}`;
  }

  /** Takes the claim: a first delivery, a redelivery of an abandoned one, or undefined (not ours). */
  async take(ref: DeliveryRef): Promise<ClaimOutcome> {
    const taken = await this.claims.take(DeliveryClaims.member(ref));
    return taken === "retry" ? "redelivery" : taken;
  }

  /** Runs `work` (the delivery), renewing the lease meanwhile. */
  async whileHeld<T>(ref: DeliveryRef, work: () => Promise<T>, onError: (err: unknown) => void): Promise<T> {
    return this.claims.whileHeld(DeliveryClaims.member(ref), work, onError);
  }

  /** The result is out: nobody delivers it again. */
  async confirm(ref: DeliveryRef): Promise<void> {
    await this.claims.confirm(DeliveryClaims.member(ref));
  }

  /** Forgets an abandoned claim whose job no longer exists (removed after its 7 days). */
  async drop(ref: DeliveryRef): Promise<void> {
    await this.claims.drop(DeliveryClaims.member(ref));
  }

  /** Claims whose holder stopped renewing its lease (it died mid-delivery), oldest first. */
  async abandoned(limit = 50): Promise<DeliveryRef[]> {
    return (await this.claims.abandoned(limit)).map((member) => {
      const at = member.lastIndexOf(":");
      return { jobId: member.slice(0, at), createdAt: member.slice(at + 1) };
    });
  }
}
