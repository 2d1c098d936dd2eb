import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FileLock } from "../../../src/engine/models/file-lock.js";
import { tempDirs } from "../../helpers/temp-dirs.js";

const tempDir = tempDirs("file-lock-test-");
const free = (path: string) => spawnSync("flock", ["-n", path, "true"]).status === 0;

describe("FileLock", () => {
  it("excludes other holders until released, and lets shared holders in together", async () => {
    const path = join(tempDir(), "locks", "a.lock");
    const lock = await FileLock.acquire(path);
    expect(lock.coordinated).toBe(true);
    expect(await FileLock.tryAcquire(path)).toBeUndefined();
    expect(await FileLock.tryAcquire(path, { shared: true })).toBeUndefined();
    expect(free(path)).toBe(false); // held for other processes too
    await lock.release();
    await lock.release();

    const readers = [
      await FileLock.acquire(path, { shared: true }),
      await FileLock.acquire(path, { shared: true }),
    ];
    expect(await FileLock.tryAcquire(path)).toBeUndefined();
    for (const r of readers) await r.release();
    const again = await FileLock.tryAcquire(path);
    expect(again?.coordinated).toBe(true);
    await again?.release();
  });

  it("waits for a holder in another process, and gets the lock when the kernel drops it at the holder's death", async () => {
    const path = join(tempDir(), "b.lock");
    writeFileSync(path, String(process.pid)); // a lock file's content means nothing
    const holder = spawn("flock", ["-o", path, "sleep", "60"], { stdio: "ignore", detached: true });
    while (free(path)) await new Promise((resolve) => setTimeout(resolve, 10));
    let waited = false;
    const acquiring = FileLock.acquire(path, {
      onWait: () => {
        waited = true;
      },
    });
    while (!waited) await new Promise((resolve) => setTimeout(resolve, 10));
    process.kill(-(holder.pid as number), "SIGKILL");
    const lock = await acquiring;
    expect(lock.coordinated).toBe(true);
    await lock.release();
  });

  it("stops waiting when aborted, leaving the lock free", async () => {
    const path = join(tempDir(), "c.lock");
    const held = await FileLock.acquire(path);
    const stop = new AbortController();
    const waiting = FileLock.acquire(path, {
      signal: stop.signal,
      onWait: () => stop.abort(new Error("stopping")),
    });
    await expect(waiting).rejects.toThrow("stopping");
    await held.release();
    expect(free(path)).toBe(true);
  });

  it("without a flock program, coordinates nothing and says so", async () => {
    const path = join(tempDir(), "d.lock");
    const saved = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const lock = await FileLock.acquire(path);
      expect(lock.coordinated).toBe(false);
      expect(await FileLock.tryAcquire(path)).toBeUndefined();
      await lock.release();
    } finally {
      process.env.PATH = saved;
    }
  });
});
