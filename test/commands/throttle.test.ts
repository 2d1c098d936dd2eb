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

  it("never replaces the only edit of a stage not shown yet: each stage shows, the latest of each", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    const start = Date.now();
    const edit = (text: string, stage: string) =>
      throttle.schedule("m", async () => void done.push(`${Date.now() - start} ${text}`), stage);
    edit("embedding 1", "embedding");
    await vi.advanceTimersByTimeAsync(0);
    // All within one interval: embedding's next step is replaced (the stage shows already), the two
    // later stages each keep their latest edit and take their turns.
    edit("embedding 2", "embedding");
    edit("finetune 1", "finetune");
    edit("finetune 2", "finetune");
    edit("render 1", "render");
    edit("render 2", "render");
    await vi.advanceTimersByTimeAsync(10_000);
    expect(done).toEqual(["0 embedding 1", "2000 finetune 2", "4000 render 2"]);
  });

  it("queues a stage once: stages that alternate leave no backlog, the latest edit comes next", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    const start = Date.now();
    const edit = (text: string, stage: string) =>
      throttle.schedule("m", async () => void done.push(`${Date.now() - start} ${text}`), stage);
    edit("encode 1", "encode");
    await vi.advanceTimersByTimeAsync(0);
    for (let i = 1; i <= 5; i++) {
      edit(`render ${i}`, "render");
      edit(`encode ${i + 1}`, "encode");
    }
    await vi.advanceTimersByTimeAsync(10_000);
    expect(done).toEqual(["0 encode 1", "2000 render 1", "4000 encode 6"]);
  });

  it("on settle, makes the pending first edit of a stage (at the interval's pace) and drops the rest", async () => {
    const throttle = new EditThrottle(2000);
    const done: string[] = [];
    const start = Date.now();
    const edit = (text: string, stage?: string) =>
      throttle.schedule("m", async () => void done.push(`${Date.now() - start} ${text}`), stage);
    edit("embedding 1", "embedding");
    await vi.advanceTimersByTimeAsync(0);
    edit("finetune 1", "finetune");
    edit("render 1", "render");
    edit("render 2", "render");
    const settled = throttle.settle("m");
    edit("refused: settling"); // the caller's edit is the last
    let over = false;
    void settled.then(() => {
      over = true;
    });
    await vi.advanceTimersByTimeAsync(3999);
    expect(over).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await settled;
    expect(done).toEqual(["0 embedding 1", "2000 finetune 1", "4000 render 2"]);
    expect(throttle.size).toBe(0);

    // A stage already shown is not shown again: its pending step is dropped at once.
    edit("render 3", "render");
    await vi.advanceTimersByTimeAsync(1000);
    edit("render 4", "render");
    await throttle.settle("m");
    await vi.advanceTimersByTimeAsync(10_000);
    expect(done.slice(3)).toEqual(["4000 render 3"]);
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
