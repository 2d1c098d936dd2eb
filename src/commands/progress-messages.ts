// The one progress message each job keeps up to date, edited by one bot process at a time.
//
// Every bot process of a platform hears every job's progress. Only the process holding a job's lease (a
// Redis key renewed with each of its edits) edits that job's message, so edits never interleave and a
// late "⏳" from another process cannot land on "✅". The job's last word (`finish`) first makes the
// stage edits still pending here (a user sees every stage at least once), then closes the message to
// progress everywhere, then waits out a lease another process still holds, so its edit is the
// last. Where the platform refuses an edit but takes a post (MessageNotEditableError: an archived thread,
// the edit limit on old messages), or the message nears the platform's edit age limit, a fresh message is
// posted and carries on; the job's origin keeps naming the first message, Redis maps it to the current one.
// A message that is gone (GoneError: deleted, or its conversation, or the bot's access; or its thread
// locked, so that no post replaces it) is closed for good at the first refusal: an edit every interval for the rest of the job would each be refused too,
// and refusals count toward the platform's limits on invalid requests.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Redis } from "ioredis";
import { childLogger } from "../log.js";
import {
  type ChatAdapter,
  GoneError,
  type ImageFile,
  MessageNotEditableError,
  type MessageRef,
  type PostOnce,
} from "./chat.js";
import { EditThrottle } from "./throttle.js";

export interface ProgressUpdate {
  text: string;
  /**
   * The job's stage, when the update reports one: the throttle never coalesces away the only update of a
   * stage, so users see every stage a job goes through, however short.
   */
  stage?: string;
  /** The latest preview; its image is loaded and uploaded only when the message does not show it yet. */
  preview?: { id: string; image(): Promise<ImageFile | undefined> };
}

export interface ProgressMessagesOptions {
  adapter: ChatAdapter;
  redis: Redis;
  /** How long a process keeps the right to edit a job's message after its last edit (default 30 s). */
  leaseMs?: number;
}

/**
 * A message is replaced once it has lived this share of the platform's edit age limit, less two edit
 * intervals (an update may come that much later than the age it checks).
 */
const FRESH_AT = 0.9;
/** Longer than any job lives, queue wait included. */
const STATE_TTL_SECONDS = 30 * 86_400;
const CONTINUED = "⏬ Progress continues in a newer message below.";

// KEYS: state hash, lease. ARGV: this process, lease ms. 1 when this process may edit now.
const CLAIM = `
if redis.call('HGET', KEYS[1], 'closed') then return 0 end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1`;
// Like CLAIM for a closed message: 0 when taken, else how many ms the other process's lease has left.
const TAKE = `
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return left end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0`;
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

interface State {
  /** The message that shows the job now. */
  current: string;
  postedAt: number;
  /** The platform said that message is gone: nothing is edited there any more. */
  gone?: boolean;
}

export class ProgressMessages {
  private readonly adapter: ChatAdapter;
  private readonly redis: Redis;
  private readonly leaseMs: number;
  private readonly me = randomUUID();
  private readonly throttle: EditThrottle;
  /** Origin ids being finished here: their message takes no more progress from this process. */
  private readonly finishing = new Set<string>();
  /**
   * The latest preview each job reported (by origin id), carried by its later updates that report none:
   * the update that brought it may be coalesced away, the preview must not. Entries older than a lease
   * are dropped, so the map holds only live jobs.
   */
  private readonly previews = new Map<
    string,
    { at: number; preview: NonNullable<ProgressUpdate["preview"]> }
  >();
  /**
   * The jobs (by origin id) whose lease this process took within the last lease: to give the leases back
   * on a clean stop, and the preview each one's message shows, so an unchanged one is not uploaded
   * again. Older entries are dropped (their leases have expired), so the map holds only live jobs.
   */
  private readonly held = new Map<string, { at: number; preview?: { message: string; id: string } }>();
  private readonly log;

  constructor(options: ProgressMessagesOptions) {
    this.adapter = options.adapter;
    this.redis = options.redis;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.throttle = new EditThrottle(options.adapter.limits.minEditIntervalMs);
    this.log = childLogger("commands", { platform: options.adapter.platform });
  }

  private stateKey(originId: string): string {
    return `pe:chat:progress:${this.adapter.platform}:${originId}`;
  }

  private leaseKey(originId: string): string {
    return `pe:chat:progress-lease:${this.adapter.platform}:${originId}`;
  }

  /** Jobs whose lease this process took within the last lease (for the tests' look at the map's size). */
  get holding(): number {
    return this.held.size;
  }

  /** A progress message this process has just posted: it shows the job from now on, edited from here. */
  async adopt(ref: MessageRef): Promise<void> {
    await this.setCurrent(ref.id, ref.id);
    await this.claim(ref.id);
  }

  /** Shows `update` on the job's message, at the platform's pace, if this process holds the job. */
  update(origin: MessageRef, update: ProgressUpdate): void {
    if (this.finishing.has(origin.id)) return;
    const now = Date.now();
    for (const [id, { at }] of this.previews) if (now - at > this.leaseMs) this.previews.delete(id);
    if (update.preview) this.previews.set(origin.id, { at: now, preview: update.preview });
    const preview = update.preview ?? this.previews.get(origin.id)?.preview;
    const shown = preview ? { ...update, preview } : update;
    this.throttle.schedule(origin.id, () => this.show(origin, shown), update.stage);
  }

  /**
   * The job's last word: shows the stages it has not shown yet, closes the message to progress (here and
   * in every other process), waits for an edit another process may still have in flight, then edits it
   * in — or posts it where the message can no longer be edited (`once` keeps that post single when the
   * job's end is delivered again).
   */
  async finish(origin: MessageRef, text: string, once?: PostOnce): Promise<void> {
    this.finishing.add(origin.id);
    this.previews.delete(origin.id);
    try {
      // Before closing: the stage edits still claim the message as progress does.
      await this.throttle.settle(origin.id);
      const key = this.stateKey(origin.id);
      await this.redis.multi().hset(key, "closed", "1").expire(key, STATE_TTL_SECONDS).exec();
    } finally {
      this.finishing.delete(origin.id);
    }
    await this.takeOver(origin.id);
    try {
      const state = await this.state(origin.id);
      if (state.gone) return;
      await this.put(origin, state, { text, ...(once ? { once } : {}) }, []);
    } finally {
      await this.release(origin.id);
    }
  }

  /** Stops editing and gives back the leases this process holds, so another process need not wait. */
  async stop(): Promise<void> {
    this.throttle.stop();
    this.previews.clear();
    await Promise.all([...this.held.keys()].map((id) => this.release(id)));
  }

  private async show(origin: MessageRef, update: ProgressUpdate): Promise<void> {
    if (!(await this.claim(origin.id))) {
      // Another process shows this job, or it has finished: nothing of it stays here.
      this.held.delete(origin.id);
      return;
    }
    const state = await this.state(origin.id);
    const preview = update.preview;
    const showing = this.held.get(origin.id)?.preview;
    const stale = showing?.message !== state.current || showing.id !== preview?.id;
    const image = preview && stale ? await preview.image() : undefined;
    const shown = await this.put(origin, state, { text: update.text }, image ? [image] : undefined);
    const entry = this.held.get(origin.id);
    if (entry && image && preview) entry.preview = { message: shown, id: preview.id };
  }

  /**
   * Edits the job's current message, or posts a fresh one that takes over (when it is refused, or as
   * it nears the edit age limit). `images`: undefined keeps the message's images, [] removes them.
   * Returns the id of the message that shows the job now.
   */
  private async put(
    origin: MessageRef,
    state: State,
    message: { text: string; once?: PostOnce },
    images: ImageFile[] | undefined,
  ): Promise<string> {
    const ref = { conversation: origin.conversation, id: state.current };
    const { maxEditAgeMs: maxAge, minEditIntervalMs } = this.adapter.limits;
    const aged =
      maxAge !== undefined && Date.now() - state.postedAt >= maxAge * FRESH_AT - 2 * minEditIntervalMs;
    if (!aged) {
      try {
        await this.adapter.editMessage(ref, { text: message.text, ...(images ? { images } : {}) });
        return state.current;
      } catch (error) {
        if (error instanceof GoneError) await this.gone(origin.id);
        if (!(error instanceof MessageNotEditableError)) throw error;
        this.log.info(
          { message: ref.id, reason: error.message },
          "progress message not editable: posting a new one",
        );
      }
    }
    const posted = await this.adapter
      .post(origin.conversation, { ...message, ...(images?.length ? { images } : {}) })
      .catch(async (error: unknown) => {
        if (error instanceof GoneError) await this.gone(origin.id);
        throw error;
      });
    await this.setCurrent(origin.id, posted.id);
    // An aged message can still be edited: point it at its successor instead of leaving a stale state.
    if (aged) {
      await this.adapter
        .editMessage(ref, { text: CONTINUED, images: [] })
        .catch((err: unknown) =>
          this.log.debug({ err, message: ref.id }, "could not point to the new message"),
        );
    }
    return posted.id;
  }

  /** The job's message is gone for good: closed too, so that no process claims it for progress again. */
  private async gone(originId: string): Promise<void> {
    const key = this.stateKey(originId);
    await this.redis.multi().hset(key, { gone: "1", closed: "1" }).expire(key, STATE_TTL_SECONDS).exec();
  }

  private async state(originId: string): Promise<State> {
    const stored = await this.redis.hmget(this.stateKey(originId), "current", "postedAt", "gone");
    const [current, postedAt, gone] = stored;
    if (current && postedAt) return { current, postedAt: Number(postedAt), ...(gone ? { gone: true } : {}) };
    // A job from before this bookkeeping existed: its message is the origin's, of unknown age.
    return this.setCurrent(originId, originId);
  }

  private async setCurrent(originId: string, current: string): Promise<State> {
    const state = { current, postedAt: Date.now() };
    const key = this.stateKey(originId);
    await this.redis.multi().hset(key, state).expire(key, STATE_TTL_SECONDS).exec();
    return state;
  }

  private async claim(originId: string): Promise<boolean> {
    const keys = [this.stateKey(originId), this.leaseKey(originId)];
    const won = (await this.redis.eval(CLAIM, 2, ...keys, this.me, this.leaseMs)) === 1;
    if (won) this.hold(originId);
    return won;
  }

  /** Takes the lease of a closed message, waiting while another process holds it (at most one lease). */
  private async takeOver(originId: string): Promise<void> {
    const deadline = Date.now() + this.leaseMs;
    for (;;) {
      const left = Number(await this.redis.eval(TAKE, 1, this.leaseKey(originId), this.me, this.leaseMs));
      if (left <= 0) break;
      if (Date.now() > deadline) {
        // Only a lease renewed after the message closed could get here: a clock or a bug, not a race.
        this.log.warn({ message: originId }, "progress lease still held elsewhere; editing anyway");
        await this.redis.set(this.leaseKey(originId), this.me, "PX", this.leaseMs);
        break;
      }
      await sleep(Math.min(left, 250));
    }
    this.hold(originId);
  }

  private hold(originId: string): void {
    const now = Date.now();
    for (const [id, { at }] of this.held) if (now - at > this.leaseMs) this.held.delete(id);
    this.held.set(originId, { ...this.held.get(originId), at: now });
  }

  private async release(originId: string): Promise<void> {
    this.held.delete(originId);
    await this.redis.eval(RELEASE, 1, this.leaseKey(originId), this.me);
  }
}
