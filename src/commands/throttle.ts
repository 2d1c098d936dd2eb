// Progress arrives as fast as the engine steps; a message may be edited only every few seconds without
// hitting the platform's rate limits. Per message, the latest edit wins and runs at most once per
// interval; `settle` drops what is pending so that a late progress edit never overwrites a result.
import { childLogger } from "../log.js";

const log = childLogger("commands");

interface Entry {
  last: number;
  timer?: NodeJS.Timeout;
  pending?: () => Promise<void>;
  running?: Promise<void>;
  /** Settled: the message shows a result now; later progress for it is dropped. */
  closed?: boolean;
}

export class EditThrottle {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly minIntervalMs: number) {}

  /** Runs `work` now or when the interval allows; a later call before then replaces it. */
  schedule(key: string, work: () => Promise<void>): void {
    const entry = this.entries.get(key) ?? { last: 0 };
    this.entries.set(key, entry);
    if (entry.closed) return;
    entry.pending = work;
    this.arm(key, entry);
  }

  private arm(key: string, entry: Entry): void {
    if (entry.timer || entry.running || !entry.pending) return;
    const delay = Math.max(0, entry.last + this.minIntervalMs - Date.now());
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      const work = entry.pending;
      entry.pending = undefined;
      if (!work) return;
      entry.last = Date.now();
      entry.running = work()
        .catch((err: unknown) => log.warn({ err, key }, "progress edit failed"))
        .finally(() => {
          entry.running = undefined;
          this.arm(key, entry);
        });
    }, delay);
  }

  /**
   * Drops pending edits of `key`, waits for one in flight and ignores later ones, so the caller's
   * edit (the result) comes last.
   */
  async settle(key: string): Promise<void> {
    const entry = this.entries.get(key) ?? { last: 0 };
    this.entries.set(key, entry);
    entry.closed = true;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.pending = undefined;
    await entry.running;
  }

  stop(): void {
    for (const entry of this.entries.values()) clearTimeout(entry.timer);
    this.entries.clear();
  }
}
