// The messages that offer a pick (a grid with number reactions), kept in Redis so that a pick still
// works after the bot restarts. A record outlives the blobs it points to, so that a late pick can say
// "this expired, start again" instead of nothing.
import type { Redis } from "ioredis";
import { LeasedClaims, type TakeOutcome } from "../queue/leased-claims.js";
import type { Conversation, Platform } from "./chat.js";

export interface Choice {
  seed: number;
  eta?: number;
  /** How the pick names it, where the seed alone does not (a swap variant: "seed 2 · φ10 M25 A20"). */
  label?: string;
  blobId: string;
}

export interface PickRecord {
  /** `seed`: a pick renders the η sweep for that seed; `final`: a pick posts that image. */
  kind: "seed" | "final";
  command: "imagic" | "swap";
  userId: string;
  conversation: Conversation;
  prompt: string;
  choices: Choice[];
  /** For `seed` picks: the fine-tuned state the sweep renders from, and how the sweep renders. */
  stateBlobId?: string;
  sweep?: { etas: number[]; guidance: number; steps: number };
}

/** Longer than any blob TTL, so an expired pick is recognised as such. */
const RECORD_TTL_SECONDS = 30 * 86_400;

const key = (platform: Platform, messageId: string) => `pe:chat:pick:${platform}:${messageId}`;
const pickedKey = (platform: Platform, member: string) => `pe:chat:picked:${platform}:${member}`;
const pickingKey = (platform: Platform) => `pe:chat:picking:${platform}`;

/** One choice of one offer, as its claim names it. */
export interface PickRef {
  messageId: string;
  index: number;
}

/** The index holds no ':' (Slack's message ids do), so a member splits back at its last one. */
const member = ({ messageId, index }: PickRef) => `${messageId}:${index}`;

export class PickStore {
  /**
   * Who acts on each pick. A claim is pending while its render job is queued (or its final image
   * posted) and done after, so a pick whose bot died in between is taken again (retry), not lost.
   */
  private readonly claims: LeasedClaims;

  constructor(
    private readonly redis: Redis,
    private readonly platform: Platform,
    leaseMs: number,
  ) {
    this.claims = new LeasedClaims(redis, (m) => pickedKey(platform, m), pickingKey(platform), leaseMs);
  }

  get leaseMs(): number {
    return this.claims.leaseMs;
  }

  async save(messageId: string, record: PickRecord): Promise<void> {
    await this.redis.set(key(this.platform, messageId), JSON.stringify(record), "EX", RECORD_TTL_SECONDS);
  }

  async get(messageId: string): Promise<PickRecord | undefined> {
    const raw = await this.redis.get(key(this.platform, messageId));
    return raw ? (JSON.parse(raw) as PickRecord) : undefined;
  }

  /**
   * Takes choice `index` of a message: "first" the first time, "retry" when an earlier taker died before
   * it was done, undefined when it is taken (a repeated reaction, or another process acting on it).
   */
  async claim(pick: PickRef): Promise<TakeOutcome> {
    return this.claims.take(member(pick));
  }

  /** Runs `work` on a claimed pick, keeping the claim's lease meanwhile. */
  async whileClaimed<T>(pick: PickRef, work: () => Promise<T>, onError: (err: unknown) => void): Promise<T> {
    return this.claims.whileHeld(member(pick), work, onError);
  }

  /** The pick has been acted on: taken for good. */
  async done(pick: PickRef): Promise<void> {
    await this.claims.confirm(member(pick));
  }

  /** Gives a claim back when acting on it failed, so the user can react again. */
  async release(pick: PickRef): Promise<void> {
    await this.claims.release(member(pick));
  }

  /** Picks whose process died before it was done with them. */
  async abandoned(): Promise<PickRef[]> {
    return (await this.claims.abandoned()).map((m) => {
      const at = m.lastIndexOf(":");
      return { messageId: m.slice(0, at), index: Number(m.slice(at + 1)) };
    });
  }

  /** Forgets an abandoned pick that can no longer be acted on (its record is gone). */
  async drop(pick: PickRef): Promise<void> {
    await this.claims.drop(member(pick));
  }
}
