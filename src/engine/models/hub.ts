/**
 * A Hugging Face hub model id → a diffusers folder in the standard Hugging Face cache (hub-cache.ts),
 * downloading only what the engine reads: model_index.json, the configs of unet/vae/text_encoder/
 * scheduler, the tokenizer files, and one weight variant of each network: safetensors, or the `.bin`
 * pickles diffusers also loads only where a network has no safetensors at all (they are parsed, never
 * executed: torch-file.ts); never a safety checker or feature extractor.
 *
 * Protocol (the hub's public HTTP API):
 *   GET {endpoint}/api/models/{id}/revision/{rev}?blobs=true
 *       → { sha, siblings: [{ rfilename, blobId, size, lfs?: { sha256, size } }] }
 *   GET {endpoint}/{id}/resolve/{sha}/{path}   → the file (LFS files redirect to a CDN)
 *
 * What the official clients do not: a file resumes with an HTTP Range request after a dropped
 * connection, a restart or a killed process (its temp file is taken over by the next holder of the
 * blob's lock); LFS files are checked against their sha256 and small files against their git blob id
 * before they are renamed into place; one weight variant per network is chosen (fp16 where the engine
 * computes in fp16, or what the cache already holds).
 *
 * The same download puts one file of a repository in the cache (a single-file checkpoint that MODEL
 * names on the hub: resolveHubFile), or only the configs and tokenizer of a diffusers repository
 * (MODEL_CONFIG: resolveConfigs).
 *
 * The cache is used without asking the hub when HF_HUB_OFFLINE is set or the revision is a commit
 * already complete there, and instead of the hub when the hub cannot be reached or refuses (any HTTP
 * error: a repository deleted or gated since, an expired token), with a warning.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { join, sep } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { childLogger } from "../../log.js";
import { findWeightsFile, weightCandidates } from "./checkpoint.js";
import { ModelIndexSchema, parseConfig, SD_PIPELINES } from "./config.js";
import { ModelFileError } from "./errors.js";
import { FileLock, type LockOptions } from "./file-lock.js";
import { RepoCache } from "./hub-cache.js";
import { HubError, HubHttp, type ProxySettings } from "./hub-http.js";
import { DownloadMeter, type DownloadProgress, type HubLog } from "./hub-progress.js";
import { type HubFileRef, isModelId } from "./hub-ref.js";
import { checkLdmFamily } from "./ldm-config.js";
import { MAX_HEADER_BYTES, parseHeader } from "./safetensors.js";
import { isSingleFile } from "./single-file.js";

export { HubError, type HubErrorKind, type ProxySettings } from "./hub-http.js";
export type { DownloadProgress, HubLog } from "./hub-progress.js";

export interface ResolveOptions {
  /** The Hugging Face hub cache (config: MODEL_CACHE_DIR, else HF_HUB_CACHE, else HF_HOME/hub …). */
  cacheDir: string;
  /** HF_ENDPOINT; default https://huggingface.co. */
  endpoint?: string;
  /** HF_TOKEN, sent as `Authorization: Bearer` (never to the CDN a download is redirected to). */
  token?: string;
  /** Branch, tag or commit (MODEL_REVISION); default main. */
  revision?: string;
  /** Preferred weight variant ("fp16"): its files where a network has them, else the plain ones. */
  variant?: string;
  /**
   * The variant was asked for by name (MODEL_VARIANT): as diffusers, a repository without any file of
   * it is refused. Otherwise (auto) it is a preference, and weights the cache already holds in another
   * precision are used rather than downloaded again.
   */
  variantRequired?: boolean;
  /** HF_HUB_OFFLINE: never contact the hub; the cached snapshot or an error. */
  offline?: boolean;
  /** HTTPS_PROXY / HTTP_PROXY / NO_PROXY; unset ones come from the environment. */
  proxy?: ProxySettings;
  /** Aborting it (SIGTERM) stops a download at once; its temp file stays for the next start to resume. */
  signal?: AbortSignal;
  /** Progress callback; without one, a bar on a terminal, else a log line every progressIntervalMs. */
  onProgress?: (p: DownloadProgress) => void;
  progressIntervalMs?: number;
  /** Where messages go; default the "hub" logger. */
  log?: HubLog;
  /** Attempts per file before giving up (each resumes where the last stopped). */
  attempts?: number;
  /** Abort a download that receives nothing for this long (ms). */
  stallTimeoutMs?: number;
}

/** What of a repository the cache must hold. */
type Wanted =
  /** A diffusers folder the engine opens: configs, tokenizer, one variant of each network's weights. */
  | { kind: "model" }
  /** MODEL_CONFIG's configs and tokenizer, without weights. */
  | { kind: "configs" }
  /** One file (a single-file checkpoint); `urlRevision`: the revision is the one MODEL's URL names. */
  | { kind: "file"; path: string; urlRevision: boolean };

/**
 * A folder (for a single file: the file) to open, held so that no other process's cleanup deletes it
 * while in use.
 */
export interface ResolvedModel {
  folder: string;
  /** The commit the folder holds; undefined for a local folder. */
  commit?: string;
  /** Drops the hold (it also ends with the process). */
  release(): Promise<void>;
}

interface Sibling {
  rfilename: string;
  size?: number;
  /** The git blob id: the etag of a small (non-LFS) file. */
  blobId?: string;
  lfs?: { sha256?: string; oid?: string; size?: number };
}

interface RepoInfo {
  sha: string;
  siblings: Sibling[];
}

const COMMIT = /^[0-9a-f]{40}$/;
/** The components' configs a Stable Diffusion checkpoint cannot do without. */
const REQUIRED_CONFIGS = [
  "unet/config.json",
  "vae/config.json",
  "text_encoder/config.json",
  "scheduler/scheduler_config.json",
];
const TOKENIZER_FILES = [
  "tokenizer/vocab.json",
  "tokenizer/merges.txt",
  "tokenizer/tokenizer_config.json",
  "tokenizer/special_tokens_map.json",
  "tokenizer/added_tokens.json",
  "tokenizer/tokenizer.json",
];
const CONFIG_FILES = [...REQUIRED_CONFIGS, ...TOKENIZER_FILES];
const WEIGHTS: ReadonlyArray<[component: string, base: string]> = [
  ["unet", "diffusion_pytorch_model"],
  ["vae", "diffusion_pytorch_model"],
  ["text_encoder", "model"],
];

/** A local folder as is, or a hub model id found complete in the cache or downloaded into it. */
export async function resolveModel(pathOrId: string, options: ResolveOptions): Promise<ResolvedModel> {
  if (existsSync(pathOrId)) return { folder: pathOrId, release: async () => {} };
  if (!isModelId(pathOrId)) {
    throw new HubError(
      `MODEL "${pathOrId}" is neither an existing folder nor a hub model id like "owner/name"`,
      "repo",
    );
  }
  return fetchRepo(pathOrId, options, { kind: "model" });
}

/** A hub file (MODEL as a hub URL or owner/name/path.safetensors) found in the cache or downloaded into it. */
export async function resolveHubFile(ref: HubFileRef, options: ResolveOptions): Promise<ResolvedModel> {
  const revision = hubFileRevision(ref, options.revision);
  try {
    return await fetchRepo(
      ref.id,
      { ...options, revision },
      { kind: "file", path: ref.path, urlRevision: ref.revision !== undefined },
    );
  } catch (err) {
    // The short form reads like a relative path too: say why the hub was asked at all.
    if (ref.revision !== undefined || !(err instanceof HubError) || err.kind === "interrupted") throw err;
    throw new HubError(
      `MODEL ${ref.id}/${ref.path} is no file on this machine, so it was taken as ${ref.path} of the hub repository ${ref.id}: ${err.message}`,
      err.kind,
    );
  }
}

/** The configs and tokenizer of a diffusers repository (MODEL_CONFIG as a hub id), at its main branch. */
export async function resolveConfigs(id: string, options: ResolveOptions): Promise<ResolvedModel> {
  return fetchRepo(id, { ...options, revision: "main" }, { kind: "configs" });
}

/**
 * The revision to download a hub file at: the URL's, else MODEL_REVISION. Both set and different is
 * refused rather than one silently winning; MODEL_REVISION=main (its default) gives way to a URL's.
 * A file that is no checkpoint by its name is refused here, before any download. A .ckpt is fetched like a
 * .safetensors file: the engine reads its pickle without running it (torch-file.ts), as diffusers' from_single_file loads it.
 */
function hubFileRevision(ref: HubFileRef, setting: string | undefined): string {
  const where = `${ref.id}/${ref.path}`;
  if (!isSingleFile(ref.path)) {
    throw new HubError(
      `${where} is not a single-file checkpoint: MODEL names a hub file only as a .safetensors or .ckpt file (or give the repository id ${ref.id} for a diffusers repository)`,
      "repo",
    );
  }
  if (ref.revision === undefined || setting === undefined || setting === "main") {
    return ref.revision ?? setting ?? "main";
  }
  if (ref.revision !== setting) {
    throw new HubError(
      `MODEL names revision ${ref.revision} of ${where} but MODEL_REVISION is ${setting}: drop one of them`,
      "repo",
    );
  }
  return setting;
}

async function fetchRepo(id: string, options: ResolveOptions, wanted: Wanted): Promise<ResolvedModel> {
  const download = new HubDownload(id, options, wanted);
  try {
    return await download.run();
  } finally {
    await download.close();
  }
}

class HubDownload {
  private readonly endpoint: string;
  private readonly revision: string;
  private readonly cache: RepoCache;
  private readonly http: HubHttp;
  private readonly log: HubLog;
  /** Names this download's temp files: two downloads never write one file, even where locks fail. */
  private readonly nonce = randomBytes(4).toString("hex");
  /** The cache's writers lock, held shared while this download writes (cleanup takes it exclusive). */
  private writing: FileLock | undefined;

  constructor(
    private readonly id: string,
    private readonly options: ResolveOptions,
    private readonly wanted: Wanted,
  ) {
    this.endpoint = (options.endpoint ?? "https://huggingface.co").replace(/\/+$/, "");
    this.revision = options.revision ?? "main";
    this.cache = new RepoCache(options.cacheDir, id);
    this.log = options.log ?? childLogger("hub");
    this.http = new HubHttp({
      id,
      endpoint: this.endpoint,
      revision: this.revision,
      token: options.token,
      proxy: options.proxy,
      signal: options.signal,
      namedBy: {
        id: wanted.kind === "configs" ? "MODEL_CONFIG" : "MODEL",
        revision:
          wanted.kind === "file" && wanted.urlRevision ? "the revision in MODEL's URL" : "MODEL_REVISION",
      },
    });
  }

  close(): Promise<void> {
    return this.http.close();
  }

  async run(): Promise<ResolvedModel> {
    if (this.options.offline) {
      const cached = await this.fromCache(false);
      if (typeof cached !== "string") {
        this.log.info({ model: this.id, folder: cached.folder }, "HF_HUB_OFFLINE: using the cached snapshot");
        return cached;
      }
      throw new HubError(
        `HF_HUB_OFFLINE is set and ${this.id} (revision ${this.revision}) is not in the cache ${this.options.cacheDir}: ${cached}; unset HF_HUB_OFFLINE to download it, or point MODEL_CACHE_DIR or HF_HUB_CACHE at the cache that holds it`,
        "refused",
      );
    }
    // A pinned commit that is complete here needs no hub at all.
    if (COMMIT.test(this.revision)) {
      const cached = await this.fromCache(this.options.variantRequired === true);
      if (typeof cached !== "string") return cached;
    }
    try {
      return await this.download();
    } catch (err) {
      if (!(err instanceof HubError) || (err.kind !== "network" && err.kind !== "refused")) throw err;
      const cached = await this.fromCache(false);
      if (typeof cached === "string") throw err;
      this.log.warn(
        {
          model: this.id,
          revision: this.revision,
          commit: cached.commit,
          folder: cached.folder,
          reason: err.message,
        },
        `the hub failed (${err.message}); using the cached snapshot ${cached.commit} of ${this.id}`,
      );
      return cached;
    }
  }

  /** The cached snapshot of the revision, held, or why there is none. `strict`: the variant's files only. */
  private async fromCache(strict: boolean): Promise<ResolvedModel | string> {
    const commit = COMMIT.test(this.revision) ? this.revision : this.cache.readRef(this.revision);
    if (!commit) return `no snapshot of revision ${this.revision} was recorded there`;
    const hold = await this.lock(this.cache.snapshotLock(commit), { shared: true });
    const gap = this.gap(this.cache.snapshot(commit), strict);
    if (gap) {
      await hold.release();
      return `its snapshot ${commit} is incomplete (${gap})`;
    }
    return { folder: this.target(commit), commit, release: () => hold.release() };
  }

  private async download(): Promise<ResolvedModel> {
    const info = await this.repoInfo();
    const folder = this.cache.snapshot(info.sha);
    // Shared: downloads of the same commit run side by side (their big blobs are locked one by one),
    // and cleanup (exclusive) leaves a snapshot alone while anyone holds it.
    const hold = await this.lock(this.cache.snapshotLock(info.sha), { shared: true });
    try {
      let fetched: number;
      try {
        fetched = await this.fetchSnapshot(info);
      } finally {
        await this.writing?.release();
        this.writing = undefined;
      }
      if (fetched > 0) {
        this.log.info({ model: this.id, commit: info.sha, bytes: fetched, folder }, "model downloaded");
      }
      const previous = this.cache.readRef(this.revision);
      if (info.sha !== this.revision && previous !== info.sha) {
        this.cache.writeRef(this.revision, info.sha, this.nonce);
      }
      const superseded = previous && previous !== info.sha ? previous : undefined;
      if (superseded || this.cache.hasTemps() || this.cache.pending().length > 0) await this.tidy(superseded);
      return { folder: this.target(info.sha), commit: info.sha, release: () => hold.release() };
    } catch (err) {
      await hold.release();
      throw err;
    }
  }

  /**
   * Removes the snapshots branches moved away from (now, or at an earlier start when they were still
   * in use) and the temp files nobody resumes — only while no other process writes to this
   * repository's cache (the writers lock is free), and never failing a start.
   */
  private async tidy(superseded: string | undefined): Promise<void> {
    try {
      const alone = await FileLock.tryAcquire(this.cache.writersLock());
      if (!alone) return;
      try {
        const waiting: string[] = [];
        for (const commit of new Set([...this.cache.pending(), ...(superseded ? [superseded] : [])])) {
          const outcome = await this.cache.removeSuperseded(commit);
          if (outcome === "removed")
            this.log.info({ model: this.id, commit }, "removed a superseded snapshot");
          if (outcome === "kept") waiting.push(commit);
        }
        this.cache.setPending(waiting, this.nonce);
        const bytes = await this.cache.removeOrphanTemps();
        if (bytes > 0)
          this.log.info({ model: this.id, bytes }, "removed unfinished downloads nobody resumes");
      } finally {
        await alone.release();
      }
    } catch (err) {
      this.log.warn({ model: this.id, err: (err as Error).message }, "cache cleanup failed");
    }
  }

  /** What the caller opens of a snapshot: the folder, or the wanted file in it. */
  private target(commit: string): string {
    const folder = this.cache.snapshot(commit);
    return this.wanted.kind === "file" ? join(folder, this.wanted.path) : folder;
  }

  /** What the snapshot lacks of what is wanted, or undefined. */
  private gap(folder: string, strict: boolean): string | undefined {
    if (this.wanted.kind === "file") {
      return existsSync(join(folder, this.wanted.path)) ? undefined : `no ${this.wanted.path}`;
    }
    return (
      configGap(folder) ??
      (this.wanted.kind === "model" ? weightsGap(folder, this.options.variant, strict) : undefined)
    );
  }

  /** Fetches what is wanted of a commit; returns the bytes downloaded. */
  private async fetchSnapshot(info: RepoInfo): Promise<number> {
    const byName = new Map(info.siblings.map((s) => [s.rfilename, s]));
    if (this.wanted.kind === "file") {
      const file = this.wantedFile(byName, this.wanted.path);
      // A .ckpt's tensors sit behind its zip directory at the end: it is judged once it is here.
      const safetensors = file.rfilename.toLowerCase().endsWith(".safetensors");
      if (safetensors && !this.cache.has(info.sha, file.rfilename))
        await this.checkRemoteHeader(file, info.sha);
      return this.fetchFiles(info.sha, [file]);
    }
    // model_index.json first: another model family is refused before gigabytes are fetched.
    let fetched = await this.fetchFiles(info.sha, [this.sibling(byName, "model_index.json")]);
    parseConfig(
      ModelIndexSchema,
      readJson(join(this.cache.snapshot(info.sha), "model_index.json")),
      `${this.id}/model_index.json`,
      SD_PIPELINES,
    );
    for (const required of REQUIRED_CONFIGS) this.sibling(byName, required);
    const configs = CONFIG_FILES.filter((f) => byName.has(f)).map((f) => this.sibling(byName, f));
    fetched += await this.fetchFiles(info.sha, configs);
    if (this.wanted.kind === "configs") return fetched;

    const chosen: Array<{ component: string; name: string; files: Sibling[]; cached: boolean }> = [];
    for (const [component, base] of WEIGHTS) {
      chosen.push({ component, ...(await this.weightFiles(byName, component, base, info.sha)) });
    }
    this.checkVariant(chosen);
    return (
      fetched +
      (await this.fetchFiles(
        info.sha,
        chosen.flatMap((c) => c.files),
      ))
    );
  }

  /** The single file MODEL names, or a refusal that lists the checkpoints the repository has. */
  private wantedFile(byName: Map<string, Sibling>, path: string): Sibling {
    const file = byName.get(path);
    if (file) return file;
    const checkpoints = [...byName.keys()].filter((f) => isSingleFile(f) && !f.includes("/"));
    throw new HubError(
      `${this.id} has no ${path} at revision ${this.revision}; ${
        checkpoints.length > 0
          ? `its single files are ${checkpoints.join(", ")}`
          : "it has no .safetensors or .ckpt file at its top level"
      }`,
      "repo",
    );
  }

  private sibling(byName: Map<string, Sibling>, name: string): Sibling {
    const s = byName.get(name);
    if (!s)
      throw new HubError(
        `${this.id} has no ${name}; it is not a diffusers-format Stable Diffusion repository`,
        "repo",
      );
    return s;
  }

  /**
   * One component's weights (a file, or a sharded index and its shards) by weightCandidates' order.
   * With the variant only preferred, what the snapshot already holds wins: a model downloaded by
   * diffusers in fp32 is not fetched again in fp16.
   */
  private async weightFiles(
    byName: Map<string, Sibling>,
    component: string,
    base: string,
    sha: string,
  ): Promise<{ name: string; files: Sibling[]; cached: boolean }> {
    const inComponent = [...byName.keys()]
      .filter((f) => f.startsWith(`${component}/`) && !f.slice(component.length + 1).includes("/"))
      .map((f) => f.slice(component.length + 1));
    const names = weightCandidates(base, this.options.variant, inComponent).filter((n) =>
      byName.has(`${component}/${n}`),
    );
    if (!this.options.variantRequired) {
      for (const name of names) {
        const files = await this.weightSet(byName, component, name, sha, false);
        // `cached`: a preferred file was passed over for what the cache holds.
        if (files?.every((f) => this.cache.has(sha, f.rfilename)))
          return { name, files, cached: name !== names[0] };
      }
    }
    const [name] = names;
    if (name === undefined) {
      const others = inComponent
        .filter((f) => /\.(bin|ckpt|pt|pth)$/.test(f))
        .map((f) => `${component}/${f}`);
      throw new HubError(
        others.length > 0
          ? `${this.id} ships ${component} only as ${others.join(", ")}, which diffusers does not load as a component's weights`
          : `${this.id} has no ${component} weights (${component}/${base}.safetensors or a .bin)`,
        "repo",
      );
    }
    return { name, files: (await this.weightSet(byName, component, name, sha, true)) ?? [], cached: false };
  }

  /** A weight file, or a sharded index with the shards it names (fetching the index when `fetch`). */
  private async weightSet(
    byName: Map<string, Sibling>,
    component: string,
    name: string,
    sha: string,
    fetch: boolean,
  ): Promise<Sibling[] | undefined> {
    const file = this.sibling(byName, `${component}/${name}`);
    if (!name.endsWith(".json")) return [file];
    if (!this.cache.has(sha, file.rfilename)) {
      if (!fetch) return undefined;
      await this.fetchFiles(sha, [file]);
    }
    const index = readJson(join(this.cache.snapshot(sha), file.rfilename)) as {
      weight_map?: Record<string, string>;
    };
    const shards = [...new Set(Object.values(index.weight_map ?? {}))];
    return [file, ...shards.map((shard) => this.sibling(byName, `${component}/${shard}`))];
  }

  /** diffusers' rule for a variant asked for by name: refused if no network has it, a warning if some lack it. */
  private checkVariant(chosen: Array<{ component: string; name: string; cached: boolean }>): void {
    const { variant } = this.options;
    if (!variant) return;
    const other = chosen.filter((c) => !isVariantFile(c.name, variant));
    if (other.length === 0) return;
    if (this.options.variantRequired && other.length === chosen.length) {
      throw new HubError(
        `${this.id} has no ${variant} weights (MODEL_VARIANT=${variant}): set MODEL_VARIANT=auto to take the weights it has`,
        "repo",
      );
    }
    const cached = other.filter((c) => c.cached).map((c) => c.component);
    if (cached.length > 0) {
      this.log.info(
        { model: this.id, components: cached },
        `${this.id}: using the weights already in the cache for ${cached.join(", ")} (MODEL_VARIANT=auto)`,
      );
    }
    const without = other.filter((c) => !c.cached).map((c) => c.component);
    if (without.length === 0) return;
    const line = `${this.id} has no ${variant} weights for ${without.join(", ")}; using its other weights there`;
    if (this.options.variantRequired) this.log.warn({ model: this.id, components: without }, line);
    else this.log.info({ model: this.id, components: without }, line);
  }

  private async repoInfo(): Promise<RepoInfo> {
    const url = `${this.endpoint}/api/models/${this.id}/revision/${encodeURIComponent(this.revision)}?blobs=true`;
    const { res, done } = await this.http.get(url, {}, 30_000);
    let json: { sha?: unknown; siblings?: unknown };
    try {
      if (!res.ok) throw this.http.refusal(res, "model_index.json");
      json = (await res.json()) as { sha?: unknown; siblings?: unknown };
    } catch (err) {
      if (err instanceof HubError) throw err;
      this.http.throwIfInterrupted();
      throw new HubError(`${url} did not answer with JSON (${(err as Error).message})`, "network");
    } finally {
      done();
      await discard(res);
    }
    if (typeof json.sha !== "string" || !/^[0-9a-zA-Z]+$/.test(json.sha) || !Array.isArray(json.siblings)) {
      throw new HubError(
        `${url} answered without a commit sha and file list; is HF_ENDPOINT a Hugging Face hub?`,
        "repo",
      );
    }
    return { sha: json.sha, siblings: json.siblings as Sibling[] };
  }

  /** Fetches the files the snapshot does not hold yet; returns their bytes. */
  private async fetchFiles(sha: string, files: Sibling[]): Promise<number> {
    const todo = files.filter((f) => !this.cache.has(sha, f.rfilename));
    if (todo.length === 0) return 0;
    this.writing ??= await this.lock(this.cache.writersLock(), { shared: true });
    const total = todo.reduce((a, f) => a + expectedSize(f), 0);
    const meter = new DownloadMeter(total, {
      model: this.id,
      log: this.log,
      onProgress: this.options.onProgress,
      intervalMs: this.options.progressIntervalMs,
    });
    let received = 0;
    try {
      for (const file of todo) {
        const before = received;
        let fileReceived = 0;
        await this.fetchBlob(file, sha, (bytes) => {
          const fresh = Math.max(bytes - fileReceived, 0);
          fileReceived = bytes;
          received = before + bytes;
          const fileTotal = expectedSize(file);
          meter.update({ file: file.rfilename, received, total, fileReceived: bytes, fileTotal }, fresh);
        });
        received = before + expectedSize(file);
      }
    } finally {
      meter.stop();
    }
    return total;
  }

  /** Puts one file into the snapshot: its blob (downloaded unless another snapshot has it) and the link. */
  private async fetchBlob(file: Sibling, sha: string, progress: (bytes: number) => void): Promise<void> {
    const snapshot = this.cache.snapshot(sha);
    if (!join(snapshot, file.rfilename).startsWith(`${snapshot}${sep}`)) {
      throw new HubError(`${this.id} lists an unsafe file name ${JSON.stringify(file.rfilename)}`, "repo");
    }
    const known = etagOf(file);
    // An LFS file (the weights: gigabytes) is downloaded by one process at a time, holding its blob's
    // lock as huggingface_hub does; a small file is simply fetched by whoever needs it.
    const lock =
      known && file.lfs
        ? await this.lock(this.cache.blobLock(known), {
            onWait: () =>
              this.log.info(
                { model: this.id, file: file.rfilename },
                "another process is downloading this file; waiting for it",
              ),
          })
        : undefined;
    try {
      let etag = known;
      if (!etag || !existsSync(this.cache.blob(etag))) {
        const temp = this.cache.tempFile(etag ?? "unnamed", this.nonce);
        if (etag && lock?.coordinated) this.cache.adoptTemp(etag, temp);
        try {
          await this.transfer(file, sha, temp, progress);
          etag ??= await gitBlobId(temp);
          await this.verify(file, temp);
        } catch (err) {
          // Only an LFS file's bytes are kept for the next holder of its lock to resume.
          if (!lock) rmSync(temp, { force: true });
          throw err;
        }
        this.cache.storeBlob(temp, etag);
      }
      this.cache.link(sha, file.rfilename, etag);
    } finally {
      await lock?.release();
    }
  }

  private fileUrl(sha: string, path: string): string {
    return `${this.endpoint}/${this.id}/resolve/${sha}/${path.split("/").map(encodeURIComponent).join("/")}`;
  }

  /**
   * Refuses a single file that is no SD 1.x/2.x checkpoint from its safetensors header alone (two Range
   * requests: its length, then the JSON), before gigabytes are fetched. Where the server ignores Range,
   * or the header is not one, the check is left to the engine once the file is here.
   */
  private async checkRemoteHeader(file: Sibling, sha: string): Promise<void> {
    const url = this.fileUrl(sha, file.rfilename);
    const where = `${this.id}/${file.rfilename}`;
    const size = expectedSize(file);
    const length = await this.fetchRange(url, file, 0, 8);
    if (length?.byteLength !== 8) return;
    const n = length.readBigUInt64LE(0);
    if (n > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) return;
    const header = await this.fetchRange(url, file, 8, Number(n));
    if (header?.byteLength !== Number(n)) return;
    let json: unknown;
    try {
      json = JSON.parse(header.toString("utf8"));
    } catch {
      return;
    }
    const { entries } = parseHeader(where, json, 8 + Number(n), size - 8 - Number(n));
    checkLdmFamily(new Map(entries.map((e) => [e.name, e.shape])), where);
  }

  /** `length` bytes of a file from `start`, or undefined where the server does not answer the range. */
  private async fetchRange(
    url: string,
    file: Sibling,
    start: number,
    length: number,
  ): Promise<Buffer | undefined> {
    const { res, done } = await this.http.get(url, { range: `bytes=${start}-${start + length - 1}` }, 30_000);
    try {
      if (!res.ok) throw this.http.refusal(res, file.rfilename);
      if (res.status !== 206) return undefined;
      return Buffer.from(await res.arrayBuffer());
    } catch (err) {
      if (err instanceof HubError) throw err;
      throw this.http.transferError(url, err);
    } finally {
      done();
      await discard(res);
    }
  }

  /** Downloads into `temp`, resuming what it holds, across dropped connections. */
  private async transfer(file: Sibling, sha: string, temp: string, progress: (bytes: number) => void) {
    const size = expectedSize(file);
    const url = this.fileUrl(sha, file.rfilename);
    const attempts = this.options.attempts ?? 5;
    for (let attempt = 1; ; attempt++) {
      const have = sizeOf(temp);
      try {
        if (size > 0 && have >= size) return;
        await this.fetchInto(url, temp, have, file, progress);
        return;
      } catch (err) {
        if (!(err instanceof HubError) || err.kind !== "network") throw err;
        const now = sizeOf(temp);
        this.log.warn(
          { model: this.id, file: file.rfilename, attempt, bytes: now, err: err.message },
          "download interrupted; resuming",
        );
        // Give up only after `attempts` tries that made no progress at all.
        if (attempt >= attempts && now === have) {
          throw new HubError(
            `downloading ${this.id}/${file.rfilename} failed ${attempts} times (${err.message}); run again to resume`,
            "network",
          );
        }
        await sleep(Math.min(attempt, 5) * 100, undefined, { signal: this.options.signal }).catch(() =>
          this.http.throwIfInterrupted(),
        );
      }
    }
  }

  private async fetchInto(
    url: string,
    temp: string,
    have: number,
    file: Sibling,
    progress: (bytes: number) => void,
  ): Promise<void> {
    const range: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
    const { res, alive, done } = await this.http.get(url, range, this.options.stallTimeoutMs ?? 60_000);
    try {
      if (res.status === 416) return; // the temp file already holds the whole file; verify() decides
      if (!res.ok) throw this.http.refusal(res, file.rfilename);
      // A server (or CDN) that ignores Range sends the whole file again (200): start over.
      const resumed = res.status === 206;
      const fh = await open(temp, resumed ? "a" : "w");
      let bytes = resumed ? have : 0;
      try {
        const body = res.body?.[Symbol.asyncIterator]();
        for (;;) {
          // Only a failed read is the network's fault; a failed write (a full disk) is reported as is.
          const next = await body?.next().catch((err: unknown) => {
            throw this.http.transferError(url, err);
          });
          if (!next || next.done) break;
          await fh.write(next.value);
          bytes += next.value.byteLength;
          alive();
          progress(bytes);
        }
      } finally {
        await fh.close();
      }
    } finally {
      done();
      await discard(res);
    }
  }

  /** LFS files against their sha256, small files against their git blob id, others by size. */
  private async verify(file: Sibling, temp: string): Promise<void> {
    const lfs = file.lfs?.sha256 ?? file.lfs?.oid;
    const [what, listed, actual] = lfs
      ? ["sha256", lfs, await sha256File(temp)]
      : file.blobId
        ? ["git blob id", file.blobId, await gitBlobId(temp)]
        : ["size", String(expectedSize(file)), String(sizeOf(temp))];
    if (actual === listed || (what === "size" && listed === "0")) return;
    rmSync(temp, { force: true });
    throw new HubError(
      `${this.id}/${file.rfilename} failed verification: ${what} ${actual}, the hub lists ${listed}; the download was deleted, run again to retry`,
      "network",
    );
  }

  /** A file lock whose wait a shutdown interrupts. */
  private async lock(path: string, options: Omit<LockOptions, "signal">): Promise<FileLock> {
    try {
      return await FileLock.acquire(path, { ...options, signal: this.options.signal });
    } catch (err) {
      this.http.throwIfInterrupted();
      throw err;
    }
  }
}

/**
 * What keeps a cached snapshot's configs from being read — a missing config or tokenizer file (links
 * whose blob is gone count as missing) — or undefined when they are complete.
 */
function configGap(folder: string): string | undefined {
  const missing = ["model_index.json", ...REQUIRED_CONFIGS].find((f) => !existsSync(join(folder, f)));
  if (missing) return `no ${missing}`;
  const tokenizer =
    ["tokenizer/tokenizer.json"].every((f) => existsSync(join(folder, f))) ||
    ["tokenizer/vocab.json", "tokenizer/merges.txt"].every((f) => existsSync(join(folder, f)));
  if (!tokenizer) return "no tokenizer/tokenizer.json, nor vocab.json and merges.txt";
  return undefined;
}

/**
 * A missing weight file of a cached snapshot, or undefined. `strict`: the variant's weights must be
 * there (a pinned commit then skips the hub only if it holds what would be downloaded).
 */
function weightsGap(folder: string, variant: string | undefined, strict: boolean): string | undefined {
  for (const [component, base] of WEIGHTS) {
    let weights: string;
    try {
      weights = findWeightsFile(join(folder, component), base, variant);
    } catch {
      return `no ${component} weights`;
    }
    if (strict && variant && !isVariantFile(weights.slice(weights.lastIndexOf(sep) + 1), variant)) {
      return `no ${variant} ${component} weights`;
    }
    if (weights.endsWith(".json")) {
      const map = (readJson(weights) as { weight_map?: Record<string, string> }).weight_map ?? {};
      const shard = Object.values(map).find((s) => !existsSync(join(folder, component, s)));
      if (shard) return `no ${component}/${shard}`;
    }
  }
  return undefined;
}

function isVariantFile(name: string, variant: string): boolean {
  return (
    name.includes(`.${variant}.safetensors`) ||
    name.endsWith(`.${variant}.bin`) ||
    name.endsWith(`.index.${variant}.json`)
  );
}

function etagOf(f: Sibling): string | undefined {
  return f.lfs?.sha256 ?? f.lfs?.oid ?? f.blobId;
}

function expectedSize(f: Sibling): number {
  return f.lfs?.size ?? f.size ?? 0;
}

function sizeOf(path: string): number {
  return existsSync(path) ? statSync(path).size : 0;
}

/** Lets undici reuse the connection of a response whose body was not read. */
async function discard(res: { bodyUsed: boolean; body: { cancel(): Promise<void> } | null }): Promise<void> {
  if (!res.bodyUsed) await res.body?.cancel().catch(() => {});
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new ModelFileError(file, `is not valid JSON (${(err as Error).message})`);
  }
}

function hashFile(path: string, algorithm: string, prefix?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash(algorithm);
    if (prefix) hash.update(prefix);
    createReadStream(path)
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(hash.digest("hex")));
  });
}

function sha256File(path: string): Promise<string> {
  return hashFile(path, "sha256");
}

/** git's blob id (sha1 of "blob <size>\0" + content): the hub's etag of a file stored in git, not LFS. */
function gitBlobId(path: string): Promise<string> {
  return hashFile(path, "sha1", `blob ${statSync(path).size}\0`);
}
