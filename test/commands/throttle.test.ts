import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { EditThrottle } from "../../src/commands/throttle.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("EditThrottle", () => {
  it("runs the first edit at once, then only the latest one per interval", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    const edit = (text: string) => () => {
      done.push(`${Date.now()} ${text}`);
      return Promise.resolve();
    };
    const start = Date.now();
    throttle.schedule("m", edit("a"));
    await vi.advanceTimersByTimeAsync(0);
    for (const text of ["b", "c", "d"]) {
      throttle.schedule("m", edit(text));
      await vi.advanceTimersByTimeAsync(300);
    }
    await vi.advanceTimersByTimeAsync(5000);
    expect(done).toEqual([`${start} a`, `${start + 2000} d`]);
  });

  it("keeps messages apart", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    throttle.schedule("m1", async () => void done.push("m1"));
    throttle.schedule("m2", async () => void done.push("m2"));
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toEqual(["m1", "m2"]);
  });

  it("after settle, drops what was pending and forgets the message", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    throttle.schedule("m", async () => void done.push("first"));
    await vi.advanceTimersByTimeAsync(0);
    throttle.schedule("m", async () => void done.push("pending"));
    await throttle.settle("m");
    expect(throttle.size).toBe(0);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(done).toEqual(["first"]);
  });

  it("forgets a message an interval after its last edit, so the map shrinks back to nothing", async () => {
    const throttle = new EditThrottle(2000);
    for (let i = 0; i < 100; i++) throttle.schedule(`m${i}`, async () => {});
    await vi.advanceTimersByTimeAsync(0);
    expect(throttle.size).toBe(100);
    // A new edit within the interval still waits for it: the entry kept the time of the last edit.
    const done: number[] = [];
    const start = Date.now();
    throttle.schedule("m0", async () => void done.push(Date.now() - start));
    await vi.advanceTimersByTimeAsync(2000);
    expect(done).toEqual([2000]);
    await vi.advanceTimersByTimeAsync(2000);
    expect(throttle.size).toBe(0);
  });
});
