/**
 * One repository in the Hugging Face cache, laid out as huggingface_hub, diffusers and huggingface.js
 * lay it out, so that a model any of them downloaded is ours too and their cache tools see ours:
 *
 *   {cache}/models--{owner}--{name}/blobs/{etag}            each file's bytes, stored once
 *   {cache}/models--{owner}--{name}/snapshots/{commit}/{path} → ../../blobs/{etag} (relative symlinks)
 *   {cache}/models--{owner}--{name}/refs/{branch or tag}    the commit it pointed to when last resolved
 *   {cache}/.locks/models--{owner}--{name}/{etag}.lock       held while an LFS blob is downloaded
 *
 * The etag is an LFS file's sha256, or a small file's git blob id: a new upstream commit that changes
 * one file adds one blob, and every snapshot links the unchanged ones. Blobs are written through
 * `{etag}.{download}.incomplete` temp files and renamed into place once verified, so a snapshot's link
 * always points at a complete file. Our additions, beside huggingface_hub's blob locks:
 * `.locks/…/snapshots/{commit}.lock`, held shared by every process that uses a snapshot, and
 * `.locks/…/writers.lock`, held shared while a process writes blobs or links; cleanup takes both
 * exclusive (without waiting), so it never deletes what someone uses or is about to link.
 */
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { FileLock } from "./file-lock.js";

const TEMP = /^([0-9a-f]{40}|[0-9a-f]{64})\.(?:[0-9a-z-]+\.)?incomplete$/;

export class RepoCache {
  /** models--{owner}--{name} under the cache. */
  readonly dir: string;
  private readonly locks: string;

  constructor(
    readonly root: string,
    id: string,
  ) {
    const folder = `models--${id.split("/").join("--")}`;
    this.dir = join(root, folder);
    this.locks = join(root, ".locks", folder);
  }

  snapshot(commit: string): string {
    return join(this.dir, "snapshots", commit);
  }

  blob(etag: string): string {
    return join(this.dir, "blobs", etag);
  }

  blobLock(etag: string): string {
    return join(this.locks, `${etag}.lock`);
  }

  snapshotLock(commit: string): string {
    return join(this.locks, "snapshots", `${commit}.lock`);
  }

  /** Held shared by every process writing blobs or links here, exclusive by cleanup. */
  writersLock(): string {
    return join(this.locks, "writers.lock");
  }

  /**
   * Snapshots a branch moved away from that could not be removed yet (in use then), one commit a line;
   * kept beside the locks, where huggingface_hub's cache tools do not look.
   */
  private get pendingFile(): string {
    return join(this.locks, "superseded");
  }

  /** Commits whose removal waits for their last user. */
  pending(): string[] {
    try {
      return readFileSync(this.pendingFile, "utf8")
        .split("\n")
        .filter((c) => /^[0-9a-f]{40}$/.test(c));
    } catch {
      return [];
    }
  }

  /** Records which superseded snapshots still wait for removal. Call holding the writers lock exclusive. */
  setPending(commits: string[], download: string): void {
    if (commits.length === 0 && this.pending().length === 0) return;
    mkdirSync(this.locks, { recursive: true });
    const temp = `${this.pendingFile}.${download}.tmp`;
    writeFileSync(temp, commits.map((c) => `${c}\n`).join(""));
    renameSync(temp, this.pendingFile);
  }

  /** This download's temp file for a blob (`download` tells concurrent downloads apart), its folder made. */
  tempFile(etag: string, download: string): string {
    mkdirSync(join(this.dir, "blobs"), { recursive: true });
    return join(this.dir, "blobs", `${etag}.${download}.incomplete`);
  }

  /** The commit a branch or tag pointed to when it was last resolved here. */
  readRef(revision: string): string | undefined {
    try {
      return readFileSync(join(this.dir, "refs", revision), "utf8").trim() || undefined;
    } catch {
      return undefined;
    }
  }

  /** Points a branch or tag at a commit, atomically (readers never see half a ref). */
  writeRef(revision: string, commit: string, download: string): void {
    const ref = join(this.dir, "refs", revision);
    mkdirSync(dirname(ref), { recursive: true });
    const temp = `${ref}.${download}.tmp`;
    writeFileSync(temp, commit);
    renameSync(temp, ref);
  }

  /** Whether the snapshot holds `file` (a dangling link, whose blob was removed, does not count). */
  has(commit: string, file: string): boolean {
    return existsSync(join(this.snapshot(commit), file));
  }

  /**
   * Takes over the biggest temp file that earlier downloads of this blob left (a process that was
   * killed, or huggingface_hub's `{etag}.incomplete`) as `temp`, and deletes the others; its bytes are
   * resumed with a Range request. Only for the holder of the blob's lock: nobody else writes them then.
   */
  adoptTemp(etag: string, temp: string): void {
    const leftovers = this.temps()
      .filter((t) => t.etag === etag && t.path !== temp)
      .sort((a, b) => b.size - a.size);
    const [biggest, ...rest] = leftovers;
    if (biggest && !existsSync(temp)) renameSync(biggest.path, temp);
    for (const t of rest) rmSync(t.path, { force: true });
  }

  /** Moves a verified temp file into place as the blob (atomic: a reader sees no blob or all of it). */
  storeBlob(temp: string, etag: string): void {
    renameSync(temp, this.blob(etag));
  }

  /** Links `file` of a snapshot to its blob: a relative symlink, or a copy where symlinks are refused. */
  link(commit: string, file: string, etag: string): void {
    const pointer = join(this.snapshot(commit), file);
    const blob = this.blob(etag);
    mkdirSync(dirname(pointer), { recursive: true });
    const target = relative(dirname(pointer), blob);
    // A link left dangling (its blob was removed) or pointing at another blob is replaced.
    if (isSymlink(pointer) && !(readlinkSync(pointer) === target && existsSync(pointer))) unlinkSync(pointer);
    try {
      symlinkSync(target, pointer);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") return; // linked meanwhile by another download of the same snapshot
      if (code !== "EPERM" && code !== "EOPNOTSUPP" && code !== "ENOSYS") throw err;
      copyFileSync(blob, pointer);
    }
  }

  /**
   * Removes a snapshot that a branch no longer points to, with the blobs only it used, unless a ref
   * names it again. Returns "kept" when a process uses it (holds its lock): removal waits for a later
   * start. Call holding the writers lock exclusive, so that no download links a blob while its links
   * are counted.
   */
  async removeSuperseded(commit: string): Promise<"removed" | "kept" | "named"> {
    if (this.refs().includes(commit) || !existsSync(this.snapshot(commit))) return "named";
    const inUse = await FileLock.tryAcquire(this.snapshotLock(commit));
    if (!inUse) return "kept";
    try {
      const candidates = this.linkedEtags(commit);
      rmSync(this.snapshot(commit), { recursive: true, force: true });
      // Lock each blob before looking for other links to it: a download links blobs holding their lock.
      const locks: FileLock[] = [];
      try {
        for (const etag of candidates) {
          const lock = await FileLock.tryAcquire(this.blobLock(etag));
          if (lock) locks.push(lock);
          else candidates.delete(etag);
        }
        for (const other of this.snapshots())
          for (const etag of this.linkedEtags(other)) candidates.delete(etag);
        for (const etag of candidates) rmSync(this.blob(etag), { force: true });
      } finally {
        for (const lock of locks) await lock.release();
      }
      return "removed";
    } finally {
      await inUse.release();
    }
  }

  hasTemps(): boolean {
    return this.temps().length > 0;
  }

  /**
   * Deletes the temp files that no download is writing; returns their bytes. Call holding the writers
   * lock exclusive; a blob's lock held means a huggingface_hub process writes it.
   */
  async removeOrphanTemps(): Promise<number> {
    let bytes = 0;
    const byEtag = new Map<string, Array<{ path: string; size: number }>>();
    for (const t of this.temps()) byEtag.set(t.etag, [...(byEtag.get(t.etag) ?? []), t]);
    for (const [etag, temps] of byEtag) {
      const lock = await FileLock.tryAcquire(this.blobLock(etag));
      if (!lock) continue;
      try {
        for (const t of temps) {
          rmSync(t.path, { force: true });
          bytes += t.size;
        }
      } finally {
        await lock.release();
      }
    }
    return bytes;
  }

  private temps(): Array<{ path: string; etag: string; size: number }> {
    const dir = join(this.dir, "blobs");
    if (!existsSync(dir)) return [];
    return readdirSync(dir).flatMap((name) => {
      const etag = TEMP.exec(name)?.[1];
      if (!etag) return [];
      const path = join(dir, name);
      try {
        return [{ path, etag, size: statSync(path).size }];
      } catch {
        return []; // renamed or deleted meanwhile
      }
    });
  }

  private refs(): string[] {
    const dir = join(this.dir, "refs");
    if (!existsSync(dir)) return [];
    return readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile() && !e.name.endsWith(".tmp"))
      .map((e) => readFileSync(join(e.parentPath, e.name), "utf8").trim());
  }

  private snapshots(): string[] {
    const dir = join(this.dir, "snapshots");
    return existsSync(dir) ? readdirSync(dir) : [];
  }

  /** The blobs a snapshot's links point to. */
  private linkedEtags(commit: string): Set<string> {
    const dir = this.snapshot(commit);
    const etags = new Set<string>();
    if (!existsSync(dir)) return etags;
    for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (e.isSymbolicLink()) etags.add(basename(readlinkSync(join(e.parentPath, e.name))));
    }
    return etags;
  }
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}
