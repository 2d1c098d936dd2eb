// The messages that offer a pick (a grid with number reactions), kept in Redis so that a pick still
// works after the bot restarts. A record outlives the blobs it points to, so that a late pick can say
// "this expired, start again" instead of nothing.
import type { Redis } from "ioredis";
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
const pickedKey = (platform: Platform, messageId: string, index: number) =>
  `pe:chat:picked:${platform}:${messageId}:${index}`;

export class PickStore {
  constructor(
    private readonly redis: Redis,
    private readonly platform: Platform,
  ) {}

  async save(messageId: string, record: PickRecord): Promise<void> {
    await this.redis.set(key(this.platform, messageId), JSON.stringify(record), "EX", RECORD_TTL_SECONDS);
  }

  async get(messageId: string): Promise<PickRecord | undefined> {
    const raw = await this.redis.get(key(this.platform, messageId));
    return raw ? (JSON.parse(raw) as PickRecord) : undefined;
  }

  /** True the first time choice `index` of a message is taken: a repeated reaction does nothing. */
  async claim(messageId: string, index: number): Promise<boolean> {
    const ok = await this.redis.set(
      pickedKey(this.platform, messageId, index),
      "1",
      "EX",
      RECORD_TTL_SECONDS,
      "NX",
    );
    return ok === "OK";
  }

  /** Gives a claim back when acting on it failed, so the user can react again. */
  async release(messageId: string, index: number): Promise<void> {
    await this.redis.del(pickedKey(this.platform, messageId, index));
  }
}
