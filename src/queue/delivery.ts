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

/** One job's delivery: the job and its creation time (ids start again at 1 if a queue is obliterated). */
export interface DeliveryRef {
  jobId: string;
  createdAt: string;
}

export type ClaimOutcome = "first" | "redelivery" | undefined;

export class DeliveryClaims {
  /** This process, as claims name their holder. */
  readonly owner = randomUUID();

  constructor(
    private readonly redis: Redis,
    private readonly keys: QueueKeys,
    private readonly consumer: string,
    readonly leaseMs: number,
  ) {}

  private claimKey({ jobId, createdAt }: DeliveryRef): string {
    return this.keys.delivered(`${this.consumer}:${jobId}:${createdAt}`);
  }

  private get pendingKey(): string {
    return this.keys.delivering(this.consumer);
  }

  /** Job ids never hold ':' (BullMQ refuses them), so the member splits back at its last one. */
  static member({ jobId, createdAt }: DeliveryRef): string {
    return `${jobId}:${createdAt}`;
  }

  /** Takes the claim: a first delivery, a redelivery of an abandoned one, or undefined (not ours). */
  async take(ref: DeliveryRef): Promise<ClaimOutcome> {
    const taken = Number(
      await this.redis.eval(
        TAKE,
        2,
        this.claimKey(ref),
        this.pendingKey,
        this.owner,
        this.leaseMs,
        CLAIM_TTL_SECONDS,
        DeliveryClaims.member(ref),
      ),
    );
    return taken === 1 ? "first" : taken === 2 ? "redelivery" : undefined;
  }

  /** Extends this process's lease while it is still delivering; false when the claim is no longer its. */
  async renew(ref: DeliveryRef): Promise<boolean> {
    const member = DeliveryClaims.member(ref);
    return (
      Number(
        await this.redis.eval(
          RENEW,
          2,
          this.claimKey(ref),
          this.pendingKey,
          this.owner,
          this.leaseMs,
          member,
        ),
      ) === 1
    );
  }

  /** The result is out: nobody delivers it again. */
  async confirm(ref: DeliveryRef): Promise<void> {
    await this.redis
      .multi()
      .set(this.claimKey(ref), "done", "EX", CLAIM_TTL_SECONDS)
      .zrem(this.pendingKey, DeliveryClaims.member(ref))
      .exec();
  }

  /** Forgets an abandoned claim whose job no longer exists (removed after its 7 days). */
  async drop(ref: DeliveryRef): Promise<void> {
    await this.redis.zrem(this.pendingKey, DeliveryClaims.member(ref));
  }

  /** Claims whose holder stopped renewing its lease (it died mid-delivery), oldest first. */
  async abandoned(limit = 50): Promise<DeliveryRef[]> {
    const members = (await this.redis.eval(ABANDONED, 1, this.pendingKey, limit)) as string[];
    return members.map((member) => {
      const at = member.lastIndexOf(":");
      return { jobId: member.slice(0, at), createdAt: member.slice(at + 1) };
    });
  }
}
