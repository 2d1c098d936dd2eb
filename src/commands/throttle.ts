// Progress arrives as fast as the engine steps; a message may be edited only every few seconds without
// hitting the platform's rate limits. Per message, the latest edit wins and runs at most once per
// interval, except that an edit may name the stage it shows: the last edit of a stage the message has
// not shown yet is never replaced by one of a later stage, it waits its turn instead (a stage shorter than
// the interval still shows, however fast the machine). `settle` runs those, drops the rest, so that the
// caller's own edit (a result) comes last. A message's entry is forgotten once it has been idle for an
// interval, so the map holds only messages being edited now, however long the bot runs.
import { childLogger } from "../log.js";

const log = childLogger("commands");

interface Edit {
  work: () => Promise<void>;
  stage?: string;
}

interface Entry {
  last: number;
  timer?: NodeJS.Timeout;
  /** Edits to make in order: all but the last show a stage for the first time. */
  queue: Edit[];
  /** The stages this message has shown. */
  shown: Set<string>;
  running?: Promise<void>;
  /** Settling: takes no new edits, runs what it must (resolved once done), then is dropped from the map. */
  settling?: { done: Promise<void>; resolve: () => void };
  /** Settled: dropped from the map; an edit still finishing must not re-arm it. */
  settled?: boolean;
}

export class EditThrottle {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly minIntervalMs: number) {}

  /**
   * Runs `work` now or when the interval allows; a later call before then replaces it, unless it is the
   * first edit to show its `stage`.
   */
  schedule(key: string, work: () => Promise<void>, stage?: string): void {
    const entry = this.entries.get(key) ?? { last: 0, queue: [], shown: new Set<string>() };
    if (entry.settling) return;
    this.entries.set(key, entry);
    const { queue } = entry;
    const last = queue.at(-1);
    if (last && (last.stage === stage || !this.firstOfStage(entry, queue.length - 1))) queue.pop();
    queue.push({ work, ...(stage === undefined ? {} : { stage }) });
    this.arm(key, entry);
  }

  /** Messages with an edit pending, running, or made less than an interval ago. */
  get size(): number {
    return this.entries.size;
  }

  /**
   * Whether the edit at `index` of the queue is the first to show its stage. (Never shown nor queued
   * before it, so the queue stays as short as the stages are few, however they alternate.)
   */
  private firstOfStage(entry: Entry, index: number): boolean {
    const stage = entry.queue[index]?.stage;
    if (stage === undefined || entry.shown.has(stage)) return false;
    return entry.queue.slice(0, index).every((edit) => edit.stage !== stage);
  }

  private arm(key: string, entry: Entry): void {
    if (entry.settled || entry.timer || entry.running) return;
    if (entry.settling && entry.queue.length === 0) {
      entry.settling.resolve();
      return;
    }
    const delay = Math.max(0, entry.last + this.minIntervalMs - Date.now());
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      const edit = entry.queue.shift();
      if (!edit) {
        // Idle for a whole interval: nothing left to space out.
        if (this.entries.get(key) === entry) this.entries.delete(key);
        return;
      }
      entry.last = Date.now();
      if (edit.stage !== undefined) entry.shown.add(edit.stage);
      entry.running = edit
        .work()
        .catch((err: unknown) => log.warn({ err, key }, "progress edit failed"))
        .finally(() => {
          // The interval counts from the end of an edit: one that waited out a rate limit is not
          // followed by another at once.
          entry.last = Date.now();
          entry.running = undefined;
          this.arm(key, entry);
        });
    }, delay);
  }

  /**
   * Takes no more edits of `key`, makes the pending ones that first show a stage (at the interval's
   * pace), drops the rest, waits for the one in flight and forgets the message, so that the caller's
   * edit comes after every edit scheduled so far. (Refusing edits scheduled later is the caller's: see
   * ProgressMessages, which closes a finished message in Redis.)
   */
  async settle(key: string): Promise<void> {
    const entry = this.entries.get(key);
    if (!entry) return;
    const last = entry.queue.length - 1;
    if (last >= 0 && !this.firstOfStage(entry, last)) entry.queue.pop();
    if (entry.queue.length > 0 || entry.settling) {
      if (!entry.settling) {
        let resolve = () => {};
        const done = new Promise<void>((r) => {
          resolve = r;
        });
        entry.settling = { done, resolve };
        this.arm(key, entry);
      }
      await entry.settling.done;
    }
    if (this.entries.get(key) === entry) this.entries.delete(key);
    entry.settled = true;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.queue = [];
    await entry.running;
  }

  stop(): void {
    for (const entry of this.entries.values()) {
      entry.settled = true;
      clearTimeout(entry.timer);
      entry.settling?.resolve();
    }
    this.entries.clear();
  }
}
