/**
 * Advisory file locks that the kernel releases when their process dies, however it dies (SIGKILL, the
 * OOM killer, a container stopped after its grace period).
 *
 * Node has no flock(2), so util-linux's `flock` program takes it for us: we open the lock file, hand
 * the descriptor to `flock -x 3` as its fd 3, and it locks and exits. A flock belongs to the open file
 * description, which our descriptor keeps alive, so the lock is ours until we close it or die. Nothing
 * in the lock names a process: PID reuse (an engine is PID 1 or 7 on every container start) and PID
 * namespaces (containers sharing a volume) cannot make a dead lock look alive or a live one dead, which
 * is what broke the earlier "directory holding a PID" lock. huggingface_hub's `filelock` takes the same
 * flock(2) on the same `.lock` files, so our engines and Python processes sharing the cache wait for
 * each other too. flock works across processes of one kernel (Docker volumes shared by containers) and
 * on NFS (Linux emulates it with fcntl locks, which the server drops when a dead client's lease ends).
 *
 * Where no `flock` program exists (macOS, busybox images without util-linux), the filesystem refuses
 * locks or the lock file cannot be made (a read-only cache), nothing is coordinated: `acquire` returns a lock with `coordinated: false` (logged once) and
 * `tryAcquire` returns undefined. Callers stay correct without a lock (per-download temp files,
 * verification, atomic renames) and only skip what needs to know that nobody else is at work: resuming
 * another process's temp file, and deleting anything.
 */
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { dirname } from "node:path";
import { childLogger } from "../../log.js";

const log = childLogger("lock");

/** `flock -n -E 75`: the exit code that means "held by someone else" (EX_TEMPFAIL), apart from errors (1, 64+). */
const BUSY = 75;

export interface LockOptions {
  /** A shared (reader) lock: any number may hold one, an exclusive lock waits for all of them. */
  shared?: boolean;
  /** Stops waiting (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  /** Called once when the lock is held by someone else and acquire() starts to wait. */
  onWait?: () => void;
}

let warned = false;

export class FileLock {
  private constructor(
    private handle: FileHandle | undefined,
    /** False where locks cannot be taken (no `flock` program, or a filesystem without locks). */
    readonly coordinated: boolean,
  ) {}

  /** Waits until the lock is ours; where locks cannot be taken, returns at once with `coordinated: false`. */
  static async acquire(path: string, options: LockOptions = {}): Promise<FileLock> {
    const handle = await openLockFile(path);
    if (!handle) return new FileLock(undefined, false);
    try {
      let state = await flock(handle, options, false);
      if (state === "busy") {
        options.onWait?.();
        state = await flock(handle, options, true);
      }
      if (state === "locked") return new FileLock(handle, true);
      await handle.close();
      return new FileLock(undefined, false);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** The lock if nobody holds it now; undefined when it is held, or when locks cannot be taken here. */
  static async tryAcquire(
    path: string,
    options: Omit<LockOptions, "onWait"> = {},
  ): Promise<FileLock | undefined> {
    const handle = await openLockFile(path);
    if (!handle) return undefined;
    const state = await flock(handle, options, false).catch(async (err: unknown) => {
      await handle.close();
      throw err;
    });
    if (state === "locked") return new FileLock(handle, true);
    await handle.close();
    return undefined;
  }

  /** Releases the lock (closing the descriptor drops the flock); calling it again does nothing. */
  async release(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }
}

/** The lock file, opened (made if needed, never deleted: see below); undefined where it cannot be (a read-only cache). */
async function openLockFile(path: string): Promise<FileHandle | undefined> {
  try {
    mkdirSync(dirname(path), { recursive: true });
    // Never deleted: removing a lock file while another process waits on its inode would let a third
    // process lock a new file of the same name, and both would hold "the" lock.
    return await open(path, "a");
  } catch (err) {
    unsupported(`cannot open ${path}: ${(err as Error).message}`);
    return undefined;
  }
}

/** Says once that nothing is coordinated, and why. */
function unsupported(reason: string): void {
  if (warned) return;
  warned = true;
  log.warn(
    { reason },
    "cannot take file locks (util-linux's flock and a writable cache are needed): processes sharing the model cache do not coordinate their downloads; each still downloads to its own temp file and verifies it",
  );
}

type State = "locked" | "busy" | "unsupported";

/** Runs `flock` on our descriptor (its fd 3); `wait` blocks until the lock is free. */
function flock(handle: FileHandle, options: LockOptions, wait: boolean): Promise<State> {
  const { signal } = options;
  signal?.throwIfAborted();
  const args = [options.shared ? "-s" : "-x", ...(wait ? [] : ["-n", "-E", String(BUSY)]), "3"];
  return new Promise((resolve, reject) => {
    const child = spawn("flock", args, { stdio: ["ignore", "ignore", "pipe", handle.fd] });
    let stderr = "";
    let settled = false;
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk;
    });
    const onAbort = () => {
      settled = true;
      child.kill();
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const settle = (state: State, why?: string) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      if (state === "unsupported") unsupported(why ?? "flock failed");
      resolve(state);
    };
    child.once("error", (err) => settle("unsupported", err.message));
    child.once("exit", (code) => {
      if (code === 0) settle("locked");
      else if (code === BUSY && !wait) settle("busy");
      else settle("unsupported", stderr.trim() || `flock exited with ${code}`);
    });
  });
}
