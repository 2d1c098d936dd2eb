// At-least-once delivery of finished jobs to a named consumer ("discord", "slack"): the claim that
// says which process posts a job's result, and whether an earlier attempt may have posted part of it.
//
// A claim is taken (`pending:<process>`, with a lease) before the result is posted and confirmed
// (`done`) once it has been. A process that dies in between (SIGKILL, power loss) stops renewing its
// lease; any process of the consumer then finds the claim among the abandoned ones and delivers the
// result again, told that it is a redelivery: the chat side posts idempotently (Discord's nonce, a
// Slack message found by its metadata), so the user sees the result once.
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { QueueKeys } from "./keys.js";

/** A claim is kept this long: longer than a job is kept (7 days), so a replay never posts twice. */
const CLAIM_TTL_SECONDS = 30 * 86_400;

// Redis's clock for every lease, so that processes on hosts with skewed clocks agree.
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS: claim, pending set. ARGV: process, lease ms, ttl s, member.
// 0: claimed elsewhere (done, or a live lease); 1: first delivery; 2: redelivery of an abandoned claim.
const TAKE = `${NOW}
local v = redis.call('GET', KEYS[1])
local again = 0
if v then
  if string.sub(v, 1, 8) ~= 'pending:' then return 0 end
  local leased = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[4]) or '0')
  if leased > now then return 0 end
  again = 1
end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[4])
return 1 + again`;

// KEYS: claim, pending set. ARGV: process, lease ms, member.
const RENEW = `${NOW}
if redis.call('GET', KEYS[1]) ~= 'pending:' .. ARGV[1] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[3])
return 1`;

// KEYS: pending set. ARGV: how many. The members whose lease has run out.
const ABANDONED = `${NOW}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))`;

/**
 * Claims with a lease on named pieces of work (`members`), taken by one process at a time: `take` gives
 * the first claim or an abandoned one (its holder stopped renewing), `confirm` ends it for good. Result
 * deliveries use it (DeliveryClaims), and so do chat commands between their acknowledgement and their
 * job (src/commands/pending.ts).
 */
export class LeasedClaims {
  /** This process, as claims name their holder. */
  readonly owner = randomUUID();

  /**
   * @param claimKey the key that holds one member's claim (`pending:<process>`, then `done`)
   * @param pendingKey the sorted set of unconfirmed members, scored by lease expiry (ms)
   * @param ttlSeconds how long a claim is kept: longer than the work can come back
   */
  constructor(
    private readonly redis: Redis,
    private readonly claimKey: (member: string) => string,
    private readonly pendingKey: string,
    readonly leaseMs: number,
    private readonly ttlSeconds: number,
  ) {}

  /** Takes the claim: a first one, a retake of an abandoned one, or undefined (not ours). */
  async take(member: string): Promise<ClaimOutcome> {
    const taken = Number(
      await this.redis.eval(
        TAKE,
        2,
        this.claimKey(member),
        this.pendingKey,
        this.owner,
        this.leaseMs,
        this.ttlSeconds,
        member,
      ),
    );
    return taken === 1 ? "first" : taken === 2 ? "redelivery" : undefined;
  }

  /** Extends this process's lease while it is still at work; false when the claim is no longer its. */
  async renew(member: string): Promise<boolean> {
    return (
      Number(
        await this.redis.eval(
          RENEW,
          2,
          this.claimKey(member),
          this.pendingKey,
          this.owner,
          this.leaseMs,
          member,
        ),
      ) === 1
    );
  }

  /** The work is done: nobody takes it again. */
  async confirm(member: string): Promise<void> {
    await this.redis
      .multi()
      .set(this.claimKey(member), "done", "EX", this.ttlSeconds)
      .zrem(this.pendingKey, member)
      .exec();
  }

  /** Forgets an abandoned claim whose work no longer exists. */
  async drop(member: string): Promise<void> {
    await this.redis.zrem(this.pendingKey, member);
  }

  /** Members whose holder stopped renewing its lease (it died at work), oldest first. */
  async abandoned(limit = 50): Promise<string[]> {
    return (await this.redis.eval(ABANDONED, 1, this.pendingKey, limit)) as string[];
  }
}

/** One job's delivery: the job and its creation time (ids start again at 1 if a queue is obliterated). */
export interface DeliveryRef {
  jobId: string;
  createdAt: string;
}

export type ClaimOutcome = "first" | "redelivery" | undefined;

/** The delivery claims of one consumer ("discord", "slack"), by job. */
export class DeliveryClaims {
  private readonly claims: LeasedClaims;

  constructor(redis: Redis, keys: QueueKeys, consumer: string, leaseMs: number) {
    this.claims = new LeasedClaims(
      redis,
      (member) => keys.delivered(`${consumer}:${member}`),
      keys.delivering(consumer),
      leaseMs,
      CLAIM_TTL_SECONDS,
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
  take(ref: DeliveryRef): Promise<ClaimOutcome> {
    return this.claims.take(DeliveryClaims.member(ref));
  }

  /** Extends this process's lease while it is still delivering; false when the claim is no longer its. */
  renew(ref: DeliveryRef): Promise<boolean> {
    return this.claims.renew(DeliveryClaims.member(ref));
  }

  /** The result is out: nobody delivers it again. */
  confirm(ref: DeliveryRef): Promise<void> {
    return this.claims.confirm(DeliveryClaims.member(ref));
  }

  /** Forgets an abandoned claim whose job no longer exists (removed after its 7 days). */
  drop(ref: DeliveryRef): Promise<void> {
    return this.claims.drop(DeliveryClaims.member(ref));
  }

  /** Claims whose holder stopped renewing its lease (it died mid-delivery), oldest first. */
  async abandoned(limit = 50): Promise<DeliveryRef[]> {
    return (await this.claims.abandoned(limit)).map((member) => {
      const at = member.lastIndexOf(":");
      return { jobId: member.slice(0, at), createdAt: member.slice(at + 1) };
    });
  }
}
