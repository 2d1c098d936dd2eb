// Progress arrives as fast as the engine steps; a message may be edited only every few seconds without
// hitting the platform's rate limits. Per message, the latest edit wins and runs at most once per
// interval; `settle` drops what is pending so that the caller's own edit (a result) comes last. A
// message's entry is forgotten once it has been idle for an interval, so the map holds only messages
// being edited now, however long the bot runs.
import { childLogger } from "../log.js";

const log = childLogger("commands");

interface Entry {
  last: number;
  timer?: NodeJS.Timeout;
  pending?: () => Promise<void>;
  running?: Promise<void>;
  /** Settled: dropped from the map; an edit still finishing must not re-arm it. */
  settled?: boolean;
}

export class EditThrottle {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly minIntervalMs: number) {}

  /** Runs `work` now or when the interval allows; a later call before then replaces it. */
  schedule(key: string, work: () => Promise<void>): void {
    const entry = this.entries.get(key) ?? { last: 0 };
    this.entries.set(key, entry);
    entry.pending = work;
    this.arm(key, entry);
  }

  /** Messages with an edit pending, running, or made less than an interval ago. */
  get size(): number {
    return this.entries.size;
  }

  private arm(key: string, entry: Entry): void {
    if (entry.settled || entry.timer || entry.running) return;
    const delay = Math.max(0, entry.last + this.minIntervalMs - Date.now());
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      const work = entry.pending;
      entry.pending = undefined;
      if (!work) {
        // Idle for a whole interval: nothing left to space out.
        if (this.entries.get(key) === entry) this.entries.delete(key);
        return;
      }
      entry.last = Date.now();
      entry.running = work()
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
   * Drops the pending edit of `key`, waits for one in flight and forgets the message, so that the
   * caller's edit comes after every edit scheduled so far. (Refusing edits scheduled later is the
   * caller's: see ProgressMessages, which closes a finished message in Redis first.)
   */
  async settle(key: string): Promise<void> {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    entry.settled = true;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.pending = undefined;
    await entry.running;
  }

  stop(): void {
    for (const entry of this.entries.values()) {
      entry.settled = true;
      clearTimeout(entry.timer);
    }
    this.entries.clear();
  }
}
