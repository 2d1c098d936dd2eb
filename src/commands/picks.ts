// The messages that offer a pick (a grid with number reactions), kept in Redis so that a pick still
// works after the bot restarts. A record outlives the blobs it points to, so that a late pick can say
// "this expired, start again" instead of nothing.
import type { Redis } from "ioredis";
import { LeasedClaims, pairCodec } from "../queue/leased-claims.js";
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

/** A pick's member, `<messageId>:<index>`: the message id may hold ':' (Slack's do), the index does not. */
export const pickRefs = pairCodec<PickRef>(
  ({ messageId, index }) => [messageId, index],
  (messageId, index) => ({ messageId, index: Number(index) }),
);

/**
 * The offers' records, and who acts on each pick. A pick's claim is pending while its render job is
 * queued (or its final image posted) and confirmed after, so a pick whose bot died in between is taken
 * again (retry), not lost; a claim given back (release) lets the user react again.
 */
export class PickStore extends LeasedClaims<PickRef> {
  constructor(
    redis: Redis,
    private readonly platform: Platform,
    leaseMs: number,
  ) {
    super(redis, (m) => pickedKey(platform, m), pickingKey(platform), leaseMs, pickRefs);
  }

  async save(messageId: string, record: PickRecord): Promise<void> {
    await this.redis.set(key(this.platform, messageId), JSON.stringify(record), "EX", RECORD_TTL_SECONDS);
  }

  async get(messageId: string): Promise<PickRecord | undefined> {
    const raw = await this.redis.get(key(this.platform, messageId));
    return raw ? (JSON.parse(raw) as PickRecord) : undefined;
  }
}
