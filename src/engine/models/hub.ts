/**
 * A Hugging Face hub model id → a local diffusers folder, downloading only what the engine reads:
 * model_index.json, the configs of unet/vae/text_encoder/scheduler, the tokenizer files, and one
 * safetensors variant of each network (never .bin/.ckpt pickles, safety checker or feature extractor).
 *
 * Protocol (the hub's public HTTP API):
 *   GET {endpoint}/api/models/{id}/revision/{rev}?blobs=true → { sha, siblings: [{ rfilename, size, lfs: { sha256, size } }] }
 *   GET {endpoint}/{id}/resolve/{sha}/{path}                   → the file (LFS files redirect to a CDN)
 * Files land in {cacheDir}/{owner}--{name}/snapshots/{sha}/ through a `.part` file that a dropped
 * connection or a restart resumes with an HTTP Range request. LFS files are checked against their
 * sha256, others against their size, before they are moved into place. A snapshot that completed once is
 * reused without network access when the hub cannot be reached.
 */
import { createHash } from "node:crypto";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { SingleBar } from "cli-progress";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { ModelIndexSchema, parseConfig, SD_PIPELINES } from "./config.js";
import { ModelFileError } from "./errors.js";

const log = childLogger("hub");

export interface DownloadProgress {
  /** The file being downloaded, relative to the repository. */
  file: string;
  /** Bytes of all files to fetch so far / in all (files already cached are not counted). */
  received: number;
  total: number;
  fileReceived: number;
  fileTotal: number;
}

export interface ResolveOptions {
  cacheDir: string;
  /** HF_ENDPOINT; default https://huggingface.co. */
  endpoint?: string;
  /** HF_TOKEN, sent as `Authorization: Bearer`. */
  token?: string;
  /** Branch, tag or commit; default main. */
  revision?: string;
  /** Prefer `*.<variant>.safetensors` weights (e.g. "fp16": half the download), else the plain ones. */
  variant?: string;
  /** Progress callback; without one, a progress bar is drawn on stderr when it is a terminal. */
  onProgress?: (p: DownloadProgress) => void;
  /** Attempts per file before giving up (each resumes where the last stopped). */
  attempts?: number;
  /** Abort a download that receives nothing for this long (ms). */
  stallTimeoutMs?: number;
}

/** A hub failure (not found, no access, bad data), with a message for the operator. */
export class HubError extends UserFacingError {
  override readonly name = "HubError";
  /** `offline`: the hub could not be reached or failed (network, 5xx) — retry, or fall back to the cache. */
  constructor(
    message: string,
    readonly offline = false,
  ) {
    super(message);
  }
}

interface Sibling {
  rfilename: string;
  size?: number;
  lfs?: { sha256?: string; oid?: string; size?: number };
}

const MODEL_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** The components' configs a Stable Diffusion checkpoint cannot do without. */
const REQUIRED_CONFIGS = [
  "unet/config.json",
  "vae/config.json",
  "text_encoder/config.json",
  "scheduler/scheduler_config.json",
];
const CONFIG_FILES = [
  ...REQUIRED_CONFIGS,
  "tokenizer/vocab.json",
  "tokenizer/merges.txt",
  "tokenizer/tokenizer_config.json",
  "tokenizer/special_tokens_map.json",
  "tokenizer/tokenizer.json",
];
const WEIGHTS: ReadonlyArray<[component: string, base: string]> = [
  ["unet", "diffusion_pytorch_model"],
  ["vae", "diffusion_pytorch_model"],
  ["text_encoder", "model"],
];
const COMPLETE = ".complete";

function isModelId(value: string): boolean {
  return MODEL_ID.test(value) && !value.includes("..");
}

/** A local folder as is, or a hub model id downloaded (or found complete) in the cache. */
export async function resolveModel(pathOrId: string, options: ResolveOptions): Promise<string> {
  if (existsSync(pathOrId)) return pathOrId;
  if (!isModelId(pathOrId)) {
    throw new HubError(
      `MODEL "${pathOrId}" is neither an existing folder nor a hub model id like "owner/name"`,
    );
  }
  return new HubDownload(pathOrId, options).run();
}

class HubDownload {
  private readonly endpoint: string;
  private readonly revision: string;
  private readonly repoDir: string;
  private readonly headers: Record<string, string>;

  constructor(
    private readonly id: string,
    private readonly options: ResolveOptions,
  ) {
    this.endpoint = (options.endpoint ?? "https://huggingface.co").replace(/\/+$/, "");
    this.revision = options.revision ?? "main";
    this.repoDir = join(options.cacheDir, id.replace("/", "--"));
    this.headers = options.token ? { authorization: `Bearer ${options.token}` } : {};
  }

  async run(): Promise<string> {
    let info: { sha: string; siblings: Sibling[] };
    try {
      info = await this.repoInfo();
    } catch (err) {
      const cached = this.cachedSnapshot();
      if (err instanceof HubError && err.offline && cached) {
        log.warn({ model: this.id, folder: cached }, "hub unreachable; using the cached snapshot");
        return cached;
      }
      throw err;
    }
    const snapshot = join(this.repoDir, "snapshots", info.sha);
    if (existsSync(join(snapshot, COMPLETE))) return snapshot;
    // Engines on one host share the cache: one process downloads, the others wait and reuse.
    return withLock(`${snapshot}.lock`, async () => {
      if (!existsSync(join(snapshot, COMPLETE))) await this.fetchSnapshot(info, snapshot);
      return snapshot;
    });
  }

  private async fetchSnapshot(info: { sha: string; siblings: Sibling[] }, snapshot: string): Promise<void> {
    const byName = new Map(info.siblings.map((s) => [s.rfilename, s]));
    // model_index.json first: another model family is refused before gigabytes are fetched.
    const indexSibling = this.sibling(byName, "model_index.json");
    await this.download([indexSibling], snapshot, info.sha);
    parseConfig(
      ModelIndexSchema,
      readJson(join(snapshot, "model_index.json")),
      `${this.id}/model_index.json`,
      SD_PIPELINES,
    );

    const configs = CONFIG_FILES.filter((f) => byName.has(f)).map((f) => this.sibling(byName, f));
    for (const required of REQUIRED_CONFIGS) {
      this.sibling(byName, required);
    }
    await this.download(configs, snapshot, info.sha);
    const weights: Sibling[] = [];
    for (const [component, base] of WEIGHTS) {
      weights.push(...(await this.weightFiles(byName, component, base, snapshot, info.sha)));
    }
    await this.download(weights, snapshot, info.sha);
    writeFileSync(join(snapshot, COMPLETE), `${new Date().toISOString()}\n`);
    mkdirSync(join(this.repoDir, "refs"), { recursive: true });
    writeFileSync(join(this.repoDir, "refs", encodeURIComponent(this.revision)), info.sha);
    log.info({ model: this.id, revision: info.sha, folder: snapshot }, "model downloaded");
  }

  private sibling(byName: Map<string, Sibling>, name: string): Sibling {
    const s = byName.get(name);
    if (!s)
      throw new HubError(
        `${this.id} has no ${name}; it is not a diffusers-format Stable Diffusion repository`,
      );
    return s;
  }

  /** The one weight variant of a component: the asked-for variant, else plain, else any variant; sharded or not. */
  private async weightFiles(
    byName: Map<string, Sibling>,
    component: string,
    base: string,
    snapshot: string,
    sha: string,
  ): Promise<Sibling[]> {
    const variant = this.options.variant;
    const names = [
      ...(variant ? [`${base}.${variant}.safetensors`, `${base}.safetensors.index.${variant}.json`] : []),
      `${base}.safetensors`,
      `${base}.safetensors.index.json`,
      ...[...byName.keys()]
        .filter((f) => f.startsWith(`${component}/${base}.`) && /\.[A-Za-z0-9_]+\.safetensors$/.test(f))
        .map((f) => f.slice(component.length + 1))
        .sort(),
    ];
    for (const name of names) {
      const s = byName.get(`${component}/${name}`);
      if (!s) continue;
      if (!name.endsWith(".json")) return [s];
      // A sharded checkpoint: the index names its shards.
      await this.download([s], snapshot, sha);
      const weightMap =
        (readJson(join(snapshot, s.rfilename)) as { weight_map?: Record<string, string> }).weight_map ?? {};
      return [...new Set(Object.values(weightMap))].map((shard) =>
        this.sibling(byName, `${component}/${shard}`),
      );
    }
    const pickles = [...byName.keys()].filter(
      (f) => f.startsWith(`${component}/`) && /\.(bin|ckpt|pt|pth)$/.test(f),
    );
    throw new HubError(
      pickles.length > 0
        ? `${this.id} ships ${component} only as PyTorch pickles (${pickles.join(", ")}); the engine loads safetensors only`
        : `${this.id} has no ${component} weights (${component}/${base}.safetensors)`,
    );
  }

  private async repoInfo(): Promise<{ sha: string; siblings: Sibling[] }> {
    const url = `${this.endpoint}/api/models/${this.id}/revision/${encodeURIComponent(this.revision)}?blobs=true`;
    const { res, done } = await this.request(url, {}, 30_000);
    let json: { sha?: unknown; siblings?: unknown };
    try {
      if (!res.ok) throw this.httpError(res.status, "model_index.json");
      json = (await res.json()) as { sha?: unknown; siblings?: unknown };
    } catch (err) {
      if (err instanceof HubError) throw err;
      throw new HubError(`${url} did not answer with JSON (${(err as Error).message})`, true);
    } finally {
      done();
    }
    if (typeof json.sha !== "string" || !/^[0-9a-zA-Z]+$/.test(json.sha) || !Array.isArray(json.siblings)) {
      throw new HubError(
        `${url} answered without a commit sha and file list; is HF_ENDPOINT a Hugging Face hub?`,
      );
    }
    return { sha: json.sha, siblings: json.siblings as Sibling[] };
  }

  private cachedSnapshot(): string | undefined {
    const ref = join(this.repoDir, "refs", encodeURIComponent(this.revision));
    if (!existsSync(ref)) return undefined;
    const snapshot = join(this.repoDir, "snapshots", readFileSync(ref, "utf8").trim());
    return existsSync(join(snapshot, COMPLETE)) ? snapshot : undefined;
  }

  private async download(files: Sibling[], snapshot: string, sha: string): Promise<void> {
    const todo = files.filter((f) => !this.isDone(f, snapshot));
    const total = todo.reduce((a, f) => a + expectedSize(f), 0);
    let received = 0;
    const bar = !this.options.onProgress && process.stderr.isTTY && total > 1e6 ? newBar(total) : undefined;
    try {
      for (const file of todo) {
        const before = received;
        await this.fetchFile(file, snapshot, sha, (fileReceived) => {
          received = before + fileReceived;
          const progress = {
            file: file.rfilename,
            received,
            total,
            fileReceived,
            fileTotal: expectedSize(file),
          };
          this.options.onProgress?.(progress);
          bar?.update(received, { file: file.rfilename });
        });
        received = before + expectedSize(file);
      }
    } finally {
      bar?.stop();
    }
  }

  private isDone(file: Sibling, snapshot: string): boolean {
    const path = join(snapshot, file.rfilename);
    return existsSync(path) && (expectedSize(file) === 0 || statSync(path).size === expectedSize(file));
  }

  /** One file through `<path>.part`, resuming across dropped connections, then verified and moved into place. */
  private async fetchFile(
    file: Sibling,
    snapshot: string,
    sha: string,
    progress: (bytes: number) => void,
  ): Promise<void> {
    const dest = join(snapshot, file.rfilename);
    if (!dest.startsWith(`${snapshot}${sep}`)) {
      throw new HubError(`${this.id} lists an unsafe file name ${JSON.stringify(file.rfilename)}`);
    }
    const part = `${dest}.part`;
    mkdirSync(dirname(dest), { recursive: true });
    const size = expectedSize(file);
    const url = `${this.endpoint}/${this.id}/resolve/${sha}/${file.rfilename.split("/").map(encodeURIComponent).join("/")}`;
    const attempts = this.options.attempts ?? 5;
    for (let attempt = 1; ; attempt++) {
      const have = existsSync(part) ? statSync(part).size : 0;
      try {
        if (size > 0 && have >= size) break;
        await this.fetchInto(url, part, have, file, progress);
        break;
      } catch (err) {
        if (err instanceof HubError && !err.offline) throw err;
        const now = existsSync(part) ? statSync(part).size : 0;
        log.warn(
          { file: file.rfilename, attempt, bytes: now, err: (err as Error).message },
          "download interrupted; resuming",
        );
        // Give up only after `attempts` tries that made no progress at all.
        if (attempt >= attempts && now === have) {
          throw new HubError(
            `downloading ${this.id}/${file.rfilename} failed ${attempts} times (${(err as Error).message}); run again to resume`,
            true,
          );
        }
        await sleep(Math.min(attempt, 5) * 100);
      }
    }
    await this.verify(file, part);
    renameSync(part, dest);
  }

  private async fetchInto(
    url: string,
    part: string,
    have: number,
    file: Sibling,
    progress: (bytes: number) => void,
  ) {
    const range: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
    const { res, alive, done } = await this.request(url, range, this.options.stallTimeoutMs ?? 60_000);
    try {
      if (res.status === 416) return; // the part already holds the whole file; verify() decides
      if (!res.ok) throw this.httpError(res.status, file.rfilename);
      // A server that ignores Range sends the whole file again (200): start over.
      const resumed = res.status === 206;
      const fh = await open(part, resumed ? "a" : "w");
      let bytes = resumed ? have : 0;
      try {
        if (!res.body) throw new Error("empty response body");
        for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
          await fh.write(chunk);
          bytes += chunk.byteLength;
          alive();
          progress(bytes);
        }
      } finally {
        await fh.close();
      }
    } finally {
      done();
    }
  }

  private async verify(file: Sibling, part: string): Promise<void> {
    const size = statSync(part).size;
    const expected = expectedSize(file);
    const sha = file.lfs?.sha256 ?? file.lfs?.oid;
    if (sha) {
      const actual = await sha256File(part);
      if (actual !== sha) {
        rmSync(part, { force: true });
        throw new HubError(
          `${this.id}/${file.rfilename} failed verification: sha256 ${actual}, the hub lists ${sha}; the download was deleted, run again to retry`,
        );
      }
    } else if (expected > 0 && size !== expected) {
      rmSync(part, { force: true });
      throw new HubError(
        `${this.id}/${file.rfilename} is ${size} bytes, the hub lists ${expected}; the download was deleted, run again to retry`,
      );
    }
  }

  /**
   * fetch with the auth header and a timeout that restarts whenever `alive()` reports data (stall
   * detection); `done()` stops the timer.
   */
  private async request(
    url: string,
    extra: Record<string, string>,
    timeoutMs: number,
  ): Promise<{ res: Response; alive: () => void; done: () => void }> {
    const controller = new AbortController();
    const arm = () =>
      setTimeout(() => controller.abort(new Error(`no data for ${timeoutMs / 1000} s`)), timeoutMs);
    let timer = arm();
    const alive = () => {
      clearTimeout(timer);
      timer = arm();
    };
    const done = () => clearTimeout(timer);
    try {
      const res = await fetch(url, {
        headers: { ...this.headers, ...extra },
        signal: controller.signal,
        redirect: "follow",
      });
      return { res, alive, done };
    } catch (err) {
      done();
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new HubError(
        `cannot reach ${new URL(url).origin} for ${this.id} (${cause?.code ?? cause?.message ?? (err as Error).message}); check HF_ENDPOINT and the network`,
        true,
      );
    }
  }

  private httpError(status: number, file: string): HubError {
    if (status === 401 || status === 403) {
      return new HubError(
        this.options.token
          ? `the hub refused access to ${this.id} (HTTP ${status}) with the HF_TOKEN given: accept the model's licence on its page with that account, or use a token with read access`
          : `${this.id} is gated or private (HTTP ${status}): set HF_TOKEN to an access token of an account that accepted its licence`,
      );
    }
    if (status === 404) {
      return new HubError(
        `${this.id} (revision ${this.revision}) or its ${file} was not found on ${this.endpoint} (HTTP 404)`,
      );
    }
    return new HubError(
      `${this.endpoint} answered HTTP ${status} for ${this.id}/${file}`,
      status >= 500 || status === 429,
    );
  }
}

/**
 * Runs `fn` holding a lock directory (mkdir is atomic). A lock whose process is gone (crash, kill) is
 * taken over; a lock being created (no pid yet) for over a minute counts as gone too.
 */
async function withLock<T>(lock: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(dirname(lock), { recursive: true });
  let waiting = false;
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, "pid"), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      if (lockIsStale(lock)) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (!waiting) log.info({ lock }, "another process is downloading this model; waiting for it");
      waiting = true;
      await sleep(250);
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function lockIsStale(lock: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(join(lock, "pid"), "utf8"));
  } catch {
    try {
      return Date.now() - statSync(lock).mtimeMs > 60_000;
    } catch {
      return false; // released meanwhile: the next mkdir decides
    }
  }
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

function expectedSize(f: Sibling): number {
  return f.lfs?.size ?? f.size ?? 0;
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new ModelFileError(file, `is not valid JSON (${(err as Error).message})`);
  }
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(hash.digest("hex")));
  });
}

function newBar(total: number): SingleBar {
  const bar = new SingleBar({
    format: "downloading {bar} {percentage}% | {value}/{total} bytes | {file}",
    hideCursor: true,
    stream: process.stderr,
  });
  bar.start(total, 0, { file: "" });
  return bar;
}
