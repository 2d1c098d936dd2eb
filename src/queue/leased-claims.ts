// Claims held under a lease: which process does a piece of work that must be done once (post a result,
// act on a pick), and whether an earlier attempt may have done part of it.
//
// A claim is taken (`pending:<process>`, with a lease in a sorted set of pending claims) before the
// work and confirmed (`done`) once it is done. A process that dies in between (SIGKILL, power loss)
// stops renewing its lease; any process then finds the claim among the abandoned ones and does the
// work again, told that it is a retry, so the work must be idempotent (a post named by PostOnce, a job
// added under a fixed id).
import { randomUUID } from "node:crypto";
import type { ChainableCommander, Redis } from "ioredis";

/** A claim is kept this long: longer than a job is kept (7 days), so a replay never acts twice. */
const CLAIM_TTL_SECONDS = 30 * 86_400;

// Redis's clock for every lease, so that processes on hosts with skewed clocks agree.
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS: claim, pending set. ARGV: process, lease ms, ttl s, member.
// 0: claimed elsewhere (done, or a live lease); 1: first attempt; 2: retry of an abandoned claim.
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
 * Runs `resume` now and every half of `leaseMs` — how often each process looks for the claims whose
 * holder died — a failure to `onError`. The timer it returns does not keep the process alive.
 */
export function sweepAbandoned(
  leaseMs: number,
  resume: () => Promise<void>,
  onError: (err: unknown) => void,
): NodeJS.Timeout {
  const sweep = () => void resume().catch(onError);
  sweep();
  return setInterval(sweep, leaseMs / 2).unref();
}

/** "first": nobody tried before; "retry": an earlier holder died before it confirmed; undefined: not ours. */
export type TakeOutcome = "first" | "retry" | undefined;

/**
 * How the piece of work a claim is on (its ref) is written as the member that names the claim in Redis
 * (in its claim's key and in the pending set), and read back from an abandoned one.
 */
export interface ClaimCodec<Ref> {
  encode(ref: Ref): string;
  decode(member: string): Ref;
}

/** Refs that are plain ids, each its own member. */
export const plainIds: ClaimCodec<string> = { encode: (id) => id, decode: (member) => member };

/**
 * Refs of two parts, as the member `<head>:<tail>`. It splits back at its last ':', so the head may hold
 * ':' (Slack's message ids, "channel:ts", do); a tail with one would split wrongly, so it is refused.
 */
export function pairCodec<Ref>(
  parts: (ref: Ref) => readonly [head: string, tail: string | number],
  join: (head: string, tail: string) => Ref,
): ClaimCodec<Ref> {
  return {
    encode(ref) {
      const [head, tail] = parts(ref);
      if (String(tail).includes(":")) throw new Error(`a claim's tail may hold no ':' (got "${tail}")`);
      return `${head}:${tail}`;
    },
    decode(member) {
      const at = member.lastIndexOf(":");
      return join(member.slice(0, at), member.slice(at + 1));
    },
  };
}

/** The codec argument: optional for plain string refs (plainIds), required for any other. */
type CodecArgument<Ref> = [Ref] extends [string]
  ? [string] extends [Ref]
    ? [refs?: ClaimCodec<Ref>]
    : [refs: ClaimCodec<Ref>]
  : [refs: ClaimCodec<Ref>];

export class LeasedClaims<Ref = string> {
  /** This process, as claims name their holder. */
  readonly owner = randomUUID();
  readonly refs: ClaimCodec<Ref>;

  /**
   * @param claimKey the key that holds one member's claim
   * @param pendingKey the sorted set of pending members, scored by when their lease runs out
   * @param refs how a ref is written as its member (plain string refs need none)
   */
  constructor(
    protected readonly redis: Redis,
    private readonly claimKey: (member: string) => string,
    private readonly pendingKey: string,
    readonly leaseMs: number,
    ...[refs]: CodecArgument<Ref>
  ) {
    // CodecArgument leaves the codec out only where Ref is string, for which plainIds is the codec.
    this.refs = refs ?? (plainIds as ClaimCodec<unknown> as ClaimCodec<Ref>);
  }

  /**
   * Takes the claim on `ref`: a first attempt, a retry of an abandoned one, or undefined (not ours).
   * `alongside` adds writes that must exist exactly when the claim does (a pending command's record):
   * they and the claim's script are one MULTI, which Redis runs only once its EXEC has arrived, all at
   * once, so a process killed meanwhile leaves both or neither. They are made whatever the outcome.
   */
  async take(ref: Ref, alongside?: (tx: ChainableCommander) => void): Promise<TakeOutcome> {
    const member = this.refs.encode(ref);
    const tx = this.redis.multi();
    alongside?.(tx);
    tx.eval(
      TAKE,
      2,
      this.claimKey(member),
      this.pendingKey,
      this.owner,
      this.leaseMs,
      CLAIM_TTL_SECONDS,
      member,
    );
    // Without WATCH a MULTI is never aborted: exec gives a reply per command.
    const replies = (await tx.exec()) ?? [];
    for (const [err] of replies) if (err) throw err;
    const taken = Number(replies.at(-1)?.[1]);
    return taken === 1 ? "first" : taken === 2 ? "retry" : undefined;
  }

  /**
   * Extends this process's lease (by `forMs`, the lease by default) while it still holds the claim; false
   * when the claim is no longer its. Renewed for longer and then left alone, the claim is taken again (a
   * retry) by any process's sweep once that time has passed: work put off for later.
   */
  async renew(ref: Ref, forMs = this.leaseMs): Promise<boolean> {
    const member = this.refs.encode(ref);
    return (
      Number(
        await this.redis.eval(RENEW, 2, this.claimKey(member), this.pendingKey, this.owner, forMs, member),
      ) === 1
    );
  }

  /** Runs `work`, renewing the lease every third of it meanwhile (a failed renewal goes to `onError`). */
  async whileHeld<T>(ref: Ref, work: () => Promise<T>, onError: (err: unknown) => void): Promise<T> {
    const renewal = setInterval(() => void this.renew(ref).catch(onError), this.leaseMs / 3);
    try {
      return await work();
    } finally {
      clearInterval(renewal);
    }
  }

  /** The work is done: nobody does it again. */
  async confirm(ref: Ref): Promise<void> {
    const member = this.refs.encode(ref);
    await this.redis
      .multi()
      .set(this.claimKey(member), "done", "EX", CLAIM_TTL_SECONDS)
      .zrem(this.pendingKey, member)
      .exec();
  }

  /** Gives the claim back (the work failed in a way the user can retry): the next take is a first one. */
  async release(ref: Ref): Promise<void> {
    const member = this.refs.encode(ref);
    await this.redis.multi().del(this.claimKey(member)).zrem(this.pendingKey, member).exec();
  }

  /** Forgets an abandoned claim whose work can no longer be done; its claim stays pending, not retried. */
  async drop(ref: Ref): Promise<void> {
    await this.redis.zrem(this.pendingKey, this.refs.encode(ref));
  }

  /** Refs whose holder stopped renewing its lease (it died mid-work), oldest first. */
  async abandoned(limit = 50): Promise<Ref[]> {
    const members = (await this.redis.eval(ABANDONED, 1, this.pendingKey, limit)) as string[];
    return members.map((member) => this.refs.decode(member));
  }
}
