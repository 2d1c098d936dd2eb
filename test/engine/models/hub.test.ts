import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { dirname, join, relative } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { findWeightsFile, openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import {
  type DownloadProgress,
  HubError,
  type ResolveOptions,
  resolveModel,
} from "../../../src/engine/models/hub.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import { FakeHub, gitBlobId, isLfs, OTHER_TOKEN, sha256, TOKEN } from "../../helpers/fake-hub.js";
import { tempDirs } from "../../helpers/temp-dirs.js";
import { writeSafetensors } from "../../helpers/write-safetensors.js";
import { writeTorchCopy } from "../../helpers/write-torch.js";
import { until } from "../../queue/support/setup.js";

const SD1 = "test/fixtures/models/sd1/model";
const UNET = "unet/diffusion_pytorch_model.safetensors";
const UNET_FP16 = "unet/diffusion_pytorch_model.fp16.safetensors";

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => !e.isDirectory())
    .map((e) => relative(dir, join(e.parentPath, e.name)));
}

/** The sd1 fixture laid out as a hub repository, with files the engine must not fetch. */
function sd1Repo(): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const f of listFiles(SD1)) files.set(f, readFileSync(join(SD1, f)));
  files.set("unet/diffusion_pytorch_model.bin", Buffer.from("pickle"));
  files.set("v1-5-pruned-emaonly.ckpt", Buffer.from("pickle"));
  files.set("safety_checker/model.safetensors", Buffer.from("unused"));
  files.set("feature_extractor/preprocessor_config.json", Buffer.from("{}"));
  files.set("README.md", Buffer.from("# model card"));
  return files;
}

const WEIGHT_FILES = [UNET, "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"];

/**
 * sd1Repo with stand-ins for the big files (tokenizer, weights; `unetBytes` for the UNet): its configs
 * pass the engine's checks, it is cheap to download, and nothing can open its weights.
 */
function tinyRepo(unetBytes = 4096): Map<string, Buffer> {
  const files = sd1Repo();
  files.set("tokenizer/vocab.json", Buffer.from('{"a</w>": 0}'));
  files.set("tokenizer/merges.txt", Buffer.from("#version: 0.2\n"));
  for (const name of WEIGHT_FILES) files.set(name, Buffer.alloc(name === UNET ? unetBytes : 4096, name));
  return files;
}

/** The fixture files the engine reads: what a first start downloads. */
const ENGINE_FILES = listFiles(SD1).sort();

/** The URL of a local port nothing listens on (connections are refused). */
async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

/** A logger that keeps what resolveModel says. */
function recorder() {
  const lines: Array<{ level: "info" | "warn"; msg: string; fields: Record<string, unknown> }> = [];
  const entry = (level: "info" | "warn") => (fields: object, msg: string) =>
    void lines.push({ level, msg, fields: fields as Record<string, unknown> });
  return { lines, log: { info: entry("info"), warn: entry("warn") } };
}

const hub = new FakeHub();
const tempDir = tempDirs("hub-test-");
let cacheDir = "";
beforeAll(() => hub.start());
afterAll(() => hub.stop());
beforeEach(() => {
  cacheDir = tempDir();
  hub.log.length = 0;
  hub.dropAfter.clear();
  hub.stallAfter.clear();
  hub.badHash.clear();
  hub.down = undefined;
  hub.cdnIgnoresRangeOnce = false;
  hub.omitBlobIds = false;
});

const quiet = { info: () => {}, warn: () => {} };
const options = (extra: Partial<ResolveOptions> = {}): ResolveOptions => ({
  cacheDir,
  endpoint: hub.url,
  log: quiet,
  ...extra,
});
/** Resolves and lets go of the snapshot at once: the folder. */
async function folderOf(id: string, extra: Partial<ResolveOptions> = {}): Promise<string> {
  const model = await resolveModel(id, options(extra));
  await model.release();
  return model.folder;
}
const errorOf = (id: string, extra: Partial<ResolveOptions> = {}) =>
  resolveModel(id, options(extra)).then(
    () => new Error("resolved"),
    (e: unknown) => e as Error,
  );
const apiCalls = () => hub.log.filter((r) => r.path.startsWith("/api/"));
const blobsOf = (id: string) => join(cacheDir, `models--${id.replace("/", "--")}`, "blobs");

describe("resolveModel: the Hugging Face cache", () => {
  it("returns a local folder unchanged and refuses strings that are neither", async () => {
    expect(await folderOf(SD1)).toBe(SD1);
    await expect(resolveModel("not a model", options())).rejects.toThrow(
      /neither an existing folder nor a hub model id/,
    );
  });

  it("downloads only the files the engine reads into the standard layout, blobs linked into the snapshot", async () => {
    const sha = hub.publish("test/sd1", sd1Repo());
    const events: DownloadProgress[] = [];
    const folder = await folderOf("test/sd1", { onProgress: (p) => events.push(p) });
    const repo = join(cacheDir, "models--test--sd1");
    expect(folder).toBe(join(repo, "snapshots", sha));
    expect(hub.downloads().sort()).toEqual(ENGINE_FILES);
    expect(listFiles(folder).sort()).toEqual(ENGINE_FILES);
    expect(readFileSync(join(repo, "refs", "main"), "utf8")).toBe(sha);
    for (const f of ENGINE_FILES) {
      const data = readFileSync(join(SD1, f));
      // Named as huggingface_hub names blobs: an LFS file's sha256, a git file's blob id.
      const etag = isLfs(f) ? sha256(data) : gitBlobId(data);
      expect(lstatSync(join(folder, f)).isSymbolicLink()).toBe(true);
      expect(readlinkSync(join(folder, f))).toBe(
        relative(dirname(join(folder, f)), join(repo, "blobs", etag)),
      );
      expect(readFileSync(join(folder, f)).equals(data)).toBe(true);
    }
    expect(readdirSync(join(repo, "blobs")).sort()).toHaveLength(ENGINE_FILES.length);
    expect(openCheckpoint(folder).tokenizer.encode("a photo of a cat").ids.slice(0, 7)).toEqual([
      49406, 320, 1125, 539, 320, 2368, 49407,
    ]);
    const last = events.at(-1);
    expect(last?.received).toBe(last?.total);
    expect(events.some((e) => e.file === UNET)).toBe(true);

    // A second start finds the snapshot complete: one API call, no downloads.
    hub.log.length = 0;
    expect(await folderOf("test/sd1")).toBe(folder);
    expect(apiCalls()).toHaveLength(1);
    expect(hub.downloads()).toEqual([]);
  });

  it("uses a model that diffusers downloaded, without downloading it again", async () => {
    const files = tinyRepo();
    files.set(UNET_FP16, files.get(UNET) as Buffer);
    const sha = hub.publish("test/diffusers", files);
    // What huggingface_hub leaves after `from_pretrained` (fp32, with files we do not read).
    const repo = join(cacheDir, "models--test--diffusers");
    for (const [name, data] of files) {
      if (name.endsWith(".bin") || name.endsWith(".ckpt") || name === UNET_FP16) continue;
      const blob = join(repo, "blobs", isLfs(name) ? sha256(data) : gitBlobId(data));
      mkdirSync(dirname(blob), { recursive: true });
      writeFileSync(blob, data);
      const pointer = join(repo, "snapshots", sha, name);
      mkdirSync(dirname(pointer), { recursive: true });
      symlinkSync(relative(dirname(pointer), blob), pointer);
    }
    mkdirSync(join(repo, "refs"));
    writeFileSync(join(repo, "refs", "main"), sha);

    // The engine would prefer fp16 (auto on a GPU), but takes the fp32 weights already here.
    const { lines, log } = recorder();
    const folder = await folderOf("test/diffusers", { variant: "fp16", log });
    expect(folder).toBe(join(repo, "snapshots", sha));
    expect(hub.downloads()).toEqual([]);
    expect(lines.map((l) => l.msg)).toContain(
      "test/diffusers: using the weights already in the cache for unet (MODEL_VARIANT=auto)",
    );
    expect(findWeightsFile(join(folder, "unet"), "diffusion_pytorch_model", "fp16")).toBe(join(folder, UNET));
  });

  it("downloads only what a new upstream commit changed, and removes the superseded snapshot", async () => {
    const files = tinyRepo();
    const first = hub.publish("test/moving", files);
    await folderOf("test/moving");
    const blobs = readdirSync(blobsOf("test/moving")).sort();

    // A model card edit: a new commit, nothing to download.
    files.set("README.md", Buffer.from("# model card, edited"));
    const second = hub.publish("test/moving", files);
    expect(second).not.toBe(first);
    hub.log.length = 0;
    expect(await folderOf("test/moving")).toContain(second);
    expect(hub.downloads()).toEqual([]);
    expect(readdirSync(blobsOf("test/moving")).sort()).toEqual(blobs);

    // A changed scheduler config: that file only; the first two snapshots' unique blob goes with them.
    const scheduler = "scheduler/scheduler_config.json";
    const oldConfig = files.get(scheduler) as Buffer;
    files.set(scheduler, Buffer.from(`${oldConfig.toString().trimEnd()}\n\n`));
    const third = hub.publish("test/moving", files);
    hub.log.length = 0;
    const folder = await folderOf("test/moving");
    expect(folder).toContain(third);
    expect(hub.downloads()).toEqual([scheduler]);
    const snapshots = join(cacheDir, "models--test--moving", "snapshots");
    expect(readdirSync(snapshots)).toEqual([third]);
    expect(existsSync(join(blobsOf("test/moving"), gitBlobId(oldConfig)))).toBe(false);
    expect(readdirSync(blobsOf("test/moving"))).toHaveLength(blobs.length);
    expect(listFiles(folder).sort()).toEqual(ENGINE_FILES);
  });

  it("keeps a superseded snapshot while a process uses it", async () => {
    const files = tinyRepo();
    const first = hub.publish("test/held", files);
    const held = await resolveModel("test/held", options());
    files.set(
      "scheduler/scheduler_config.json",
      Buffer.from(`${files.get("scheduler/scheduler_config.json")}\n`),
    );
    const second = hub.publish("test/held", files);
    expect(await folderOf("test/held")).toContain(second);
    expect(existsSync(join(held.folder, UNET))).toBe(true);
    expect(held.folder).toContain(first);
    await held.release();
    // Its last user gone, the next start removes it.
    await folderOf("test/held");
    expect(existsSync(held.folder)).toBe(false);
  });

  it("resumes a temp file left by a killed download and removes the ones nobody will resume", async () => {
    const file = "vae/diffusion_pytorch_model.safetensors";
    const data = tinyRepo().get(file) as Buffer;
    hub.publish("test/part", tinyRepo());
    mkdirSync(blobsOf("test/part"), { recursive: true });
    // One left by a process of ours, one by huggingface_hub, one for a blob no longer wanted.
    writeFileSync(join(blobsOf("test/part"), `${sha256(data)}.0badc0de.incomplete`), data.subarray(0, 1000));
    writeFileSync(join(blobsOf("test/part"), `${sha256(data)}.incomplete`), data.subarray(0, 100));
    writeFileSync(join(blobsOf("test/part"), `${"e".repeat(64)}.feedf00d.incomplete`), "stale");
    const folder = await folderOf("test/part");
    expect(hub.log.filter((r) => r.server === "cdn" && r.file === file).map((r) => r.range)).toEqual([
      "bytes=1000-",
    ]);
    expect(readFileSync(join(folder, file)).equals(data)).toBe(true);
    expect(readdirSync(blobsOf("test/part")).filter((f) => f.endsWith(".incomplete"))).toEqual([]);
  });
});

describe("resolveModel: several processes, locks, shutdown", () => {
  it("lets one of several concurrent starts download each weight file while the others wait", async () => {
    hub.publish("test/shared", tinyRepo());
    const models = await Promise.all([1, 2, 3].map(() => resolveModel("test/shared", options())));
    expect(new Set(models.map((m) => m.folder)).size).toBe(1);
    // The weights once each; small files (configs, tokenizer) may be fetched by each start.
    expect(
      hub.log
        .filter((r) => r.server === "cdn")
        .map((r) => r.file)
        .sort(),
    ).toEqual([...WEIGHT_FILES].sort());
    expect(listFiles(models[0]?.folder ?? "").sort()).toEqual(ENGINE_FILES);
    for (const m of models) await m.release();
  });

  it("waits for a lock holder and goes on the moment the kernel drops its lock, whatever the lock file says", async () => {
    const files = tinyRepo();
    hub.publish("test/locked", files);
    const etag = sha256(files.get(UNET) as Buffer);
    const lockFile = join(cacheDir, ".locks", "models--test--locked", `${etag}.lock`);
    mkdirSync(dirname(lockFile), { recursive: true });
    // What a restarted container's engine found before: its own PID in the lock.
    writeFileSync(lockFile, String(process.pid));
    // -o: the lock stays with flock itself, not with the sleep it runs.
    const holder: ChildProcess = spawn("flock", ["-o", lockFile, "sleep", "60"], {
      stdio: "ignore",
      detached: true,
    });
    await until(() => spawnSync("flock", ["-n", lockFile, "true"]).status !== 0, 20_000, "the holder's lock");
    const { lines, log } = recorder();
    const resolving = resolveModel("test/locked", options({ log }));
    await until(() => lines.some((l) => l.msg.includes("waiting for it")), 20_000, "the wait to be logged");
    expect(hub.downloads()).not.toContain(UNET);
    process.kill(-(holder.pid as number), "SIGKILL");
    const model = await resolving;
    await model.release();
    expect(readFileSync(join(model.folder, UNET)).equals(files.get(UNET) as Buffer)).toBe(true);
  });

  it("gives each download its own temp file, so downloads that cannot lock still end correct", async () => {
    const files = tinyRepo(1_000_000);
    hub.publish("test/nolock", files);
    hub.stallAfter.set(UNET, 300_000);
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent"; // no flock program: nothing is coordinated
    try {
      const both = Promise.all(
        [1, 2].map(() => resolveModel("test/nolock", options({ stallTimeoutMs: 500, attempts: 3 }))),
      );
      const etag = sha256(files.get(UNET) as Buffer);
      const temps = () =>
        existsSync(blobsOf("test/nolock"))
          ? readdirSync(blobsOf("test/nolock")).filter((f) => f.startsWith(`${etag}.`))
          : [];
      await until(() => temps().length === 2, 20_000, "two temp files");
      hub.stallAfter.clear();
      const models = await both;
      expect(readFileSync(join(models[0]?.folder ?? "", UNET)).equals(files.get(UNET) as Buffer)).toBe(true);
      for (const m of models) await m.release();
    } finally {
      process.env.PATH = path;
    }
  });

  it("stops a download at once when aborted (SIGTERM) and leaves its bytes for the next start", async () => {
    const files = tinyRepo(2_000_000);
    hub.publish("test/abort", files);
    hub.stallAfter.set(UNET, 1_000_000);
    const stop = new AbortController();
    const resolving = resolveModel("test/abort", options({ signal: stop.signal }));
    const etag = sha256(files.get(UNET) as Buffer);
    const temp = () => readdirSync(blobsOf("test/abort")).find((f) => f.startsWith(`${etag}.`));
    await until(
      () => {
        const name = existsSync(blobsOf("test/abort")) ? temp() : undefined;
        return name !== undefined && statSync(join(blobsOf("test/abort"), name)).size === 1_000_000;
      },
      20_000,
      "1 MB of the UNet",
    );
    const started = Date.now();
    stop.abort(new Error("SIGTERM received"));
    const err = await resolving.then(
      () => new Error("resolved"),
      (e: unknown) => e as Error,
    );
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toBe(
      "downloading test/abort was interrupted: the process is stopping (the next start resumes it)",
    );
    hub.stallAfter.clear();
    hub.log.length = 0;
    const folder = await folderOf("test/abort");
    expect(hub.log.filter((r) => r.server === "cdn" && r.file === UNET).map((r) => r.range)).toEqual([
      "bytes=1000000-",
    ]);
    expect(readFileSync(join(folder, UNET)).equals(files.get(UNET) as Buffer)).toBe(true);
  });
});

describe("resolveModel: when the hub fails or refuses", () => {
  it.each([
    ["the repository was deleted (401 without a token)", {}, (id: string) => hub.repos.delete(id)],
    [
      "the repository was deleted (404 with a token)",
      { token: OTHER_TOKEN },
      (id: string) => hub.repos.delete(id),
    ],
    [
      "the repository was gated since",
      {},
      (id: string) => {
        const files = hub.files(id);
        files.set("model_index.json", Buffer.from(`${files.get("model_index.json")}\n`));
        hub.publish(id, files, { gated: true });
      },
    ],
    [
      "the repository was gated since, and the token's account has no access (403)",
      { token: OTHER_TOKEN },
      (id: string) => {
        const files = hub.files(id);
        files.set("model_index.json", Buffer.from(`${files.get("model_index.json")}\n`));
        hub.publish(id, files, { gated: true });
      },
    ],
    ["the token expired", { token: "hf_expired" }, () => {}],
    ["the hub is down (503)", {}, () => (hub.down = 503)],
  ] as Array<[string, Partial<ResolveOptions>, (id: string) => void]>)(
    "uses the complete cached snapshot, with a warning, when %s",
    async (_, extra, breakIt) => {
      const id = "test/fallback";
      hub.repos.delete(id);
      hub.publish(id, tinyRepo());
      const cached = await folderOf(id, { token: extra.token === OTHER_TOKEN ? OTHER_TOKEN : undefined });
      breakIt(id);
      const { lines, log } = recorder();
      expect(await folderOf(id, { ...extra, log })).toBe(cached);
      const warning = lines.find((l) => l.level === "warn");
      expect(warning?.msg).toMatch(
        /^the hub failed \(.+\); using the cached snapshot [0-9a-f]{40} of test\/fallback$/,
      );
    },
  );

  it("uses the cached snapshot when the hub cannot be reached", async () => {
    hub.publish("test/unreachable", tinyRepo());
    const cached = await folderOf("test/unreachable");
    const { lines, log } = recorder();
    expect(await folderOf("test/unreachable", { endpoint: await closedPortUrl(), log })).toBe(cached);
    expect(lines.find((l) => l.level === "warn")?.msg).toMatch(/ECONNREFUSED/);
  });

  it.each([
    [
      "a repository that does not exist, without a token",
      "test/typo",
      {},
      "test/typo was not found on HUB (HTTP 401, RepoNotFound): check MODEL for a typo; if it is private, set HF_TOKEN to a token of an account that can read it",
    ],
    [
      "a repository that does not exist, with a token",
      "test/typo",
      { token: OTHER_TOKEN },
      "test/typo was not found on HUB (HTTP 404, RepoNotFound), or the account of HF_TOKEN cannot see it: check MODEL for a typo",
    ],
    [
      "a token the hub does not know",
      "test/public",
      { token: "hf_revoked" },
      "the hub refused HF_TOKEN (HTTP 401: Invalid credentials in Authorization header): it is mistyped, expired or revoked; create a new one at HUB/settings/tokens",
    ],
    [
      "a gated repository, without a token",
      "test/gated",
      {},
      "test/gated is gated (HTTP 401, GatedRepo): request access at HUB/test/gated, then set HF_TOKEN to an access token of that account",
    ],
    [
      "a gated repository, with an account that has no access",
      "test/gated",
      { token: OTHER_TOKEN },
      "test/gated is gated and the account of HF_TOKEN has no access to it (HTTP 403, GatedRepo): request access at HUB/test/gated with that account (some authors approve requests by hand)",
    ],
    [
      "a revision that does not exist",
      "test/public",
      { revision: "v9" },
      'test/public has no revision "v9" (HTTP 404, RevisionNotFound: Invalid rev id: v9): check MODEL_REVISION (a branch, tag or full commit sha)',
    ],
  ] as Array<[string, string, Partial<ResolveOptions>, string]>)(
    "says what is wrong for %s",
    async (_, id, extra, message) => {
      hub.publish("test/public", tinyRepo());
      hub.publish("test/gated", tinyRepo(), { gated: true });
      const err = await errorOf(id, extra);
      expect(err).toBeInstanceOf(HubError);
      expect(err.message).toBe(message.replaceAll("HUB", hub.url));
      expect(err.message).not.toContain(extra.token ?? "no token");
    },
  );

  it("downloads a gated repository with a granted account's token, which never goes to the CDN", async () => {
    hub.publish("test/granted", tinyRepo(), { gated: true });
    const folder = await folderOf("test/granted", { token: TOKEN });
    expect(readFileSync(join(folder, UNET)).equals(tinyRepo().get(UNET) as Buffer)).toBe(true);
    expect(hub.log.filter((r) => r.server === "hub").every((r) => r.auth === `Bearer ${TOKEN}`)).toBe(true);
    expect(hub.log.filter((r) => r.server === "cdn").map((r) => r.auth)).toEqual([
      undefined,
      undefined,
      undefined,
    ]);
  });

  it("names an unreachable hub when nothing is cached", async () => {
    const down = await closedPortUrl();
    await expect(resolveModel("test/offline", options({ endpoint: down }))).rejects.toThrow(
      `cannot reach ${down} for test/offline (ECONNREFUSED); check HF_ENDPOINT, the network and the proxy settings (HTTPS_PROXY, NO_PROXY)`,
    );
  });

  it("refuses other model families before fetching weights, and repositories of pickles", async () => {
    const files = tinyRepo();
    const index = JSON.parse((files.get("model_index.json") as Buffer).toString());
    files.set(
      "model_index.json",
      Buffer.from(JSON.stringify({ ...index, _class_name: "StableDiffusionXLPipeline" })),
    );
    hub.publish("test/sdxl", files);
    await expect(resolveModel("test/sdxl", options())).rejects.toThrow(/Stable Diffusion XL/);
    expect(hub.downloads()).toEqual(["model_index.json"]);

    const pickles = tinyRepo();
    pickles.delete(UNET);
    pickles.delete("unet/diffusion_pytorch_model.bin");
    pickles.set("unet/sd-v1-5.ckpt", Buffer.from("pickle"));
    hub.publish("test/pickle", pickles);
    await expect(resolveModel("test/pickle", options())).rejects.toThrow(
      /ships unet only as unet\/sd-v1-5\.ckpt, which diffusers does not load as a component's weights/,
    );
  });

  it("downloads the .bin weights of a repository that ships no safetensors, the variant's where it has one", async () => {
    // An older community fine-tune: every network as PyTorch pickles, the UNet also in fp16.
    const files = sd1Repo();
    const dir = tempDir();
    const pickled: Array<[string, string]> = [
      [UNET, "unet/diffusion_pytorch_model.bin"],
      ["vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"],
      ["text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"],
    ];
    for (const [from, to] of pickled) {
      const file = join(dir, to.replace("/", "-"));
      writeTorchCopy(join(SD1, from), file);
      files.delete(from);
      files.set(to, readFileSync(file));
    }
    files.set(
      "unet/diffusion_pytorch_model.fp16.bin",
      files.get("unet/diffusion_pytorch_model.bin") as Buffer,
    );
    hub.publish("test/bin", files);
    const folder = await folderOf("test/bin", { variant: "fp16" });
    const weights = [
      "unet/diffusion_pytorch_model.fp16.bin",
      "vae/diffusion_pytorch_model.bin",
      "text_encoder/pytorch_model.bin",
    ];
    expect(hub.downloads().sort()).toEqual(
      [...ENGINE_FILES.filter((f) => !f.endsWith(".safetensors")), ...weights].sort(),
    );
    const ckpt = openCheckpoint(folder, { variant: "fp16" });
    expect(ckpt.unet.weightsFile).toBe(join(folder, "unet/diffusion_pytorch_model.fp16.bin"));
    expect(ckpt.textEncoder.weightsFile).toBe(join(folder, "text_encoder/pytorch_model.bin"));
    const reference = openCheckpoint(SD1);
    expect(Array.from(ckpt.unet.weights.float32("conv_in.weight"))).toEqual(
      Array.from(reference.unet.weights.float32("conv_in.weight")),
    );
    expect(Array.from(ckpt.textEncoder.weights.float32("final_layer_norm.weight"))).toEqual(
      Array.from(reference.textEncoder.weights.float32("final_layer_norm.weight")),
    );
  });
});

describe("resolveModel: transfers", () => {
  it("resumes a dropped connection at the CDN with a Range request, and survives a CDN that ignores Range", async () => {
    const files = tinyRepo(2_000_000);
    hub.publish("test/drop", files);
    hub.dropAfter.set(UNET, 1_000_000);
    const folder = await folderOf("test/drop");
    const requests = hub.log.filter((r) => r.server === "cdn" && r.file === UNET);
    expect(requests).toHaveLength(2);
    expect(requests[0]?.range).toBeUndefined();
    // The resumed request starts where the received part ends (bytes in flight at the drop are lost).
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(requests[1]?.range ?? "")?.[1]);
    expect(resumedAt).toBeGreaterThan(500_000);
    expect(resumedAt).toBeLessThanOrEqual(1_000_000);
    expect(readFileSync(join(folder, UNET)).equals(files.get(UNET) as Buffer)).toBe(true);

    // A cold CDN edge answers the resumed request with the whole file (200): written from the start.
    hub.publish("test/cold", files);
    hub.dropAfter.set(UNET, 700_000);
    hub.cdnIgnoresRangeOnce = true;
    hub.log.length = 0;
    const cold = await folderOf("test/cold");
    expect(hub.log.filter((r) => r.server === "cdn" && r.file === UNET).map((r) => r.status)).toEqual([
      200, 200,
    ]);
    expect(readFileSync(join(cold, UNET)).equals(files.get(UNET) as Buffer)).toBe(true);
  });

  it("refuses a file whose sha256 does not match and leaves nothing in its place", async () => {
    const file = "text_encoder/model.safetensors";
    const sha = hub.publish("test/hash", tinyRepo());
    hub.badHash.add(file);
    const err = await errorOf("test/hash");
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toMatch(
      /test\/hash\/text_encoder\/model\.safetensors failed verification: sha256 [0-9a-f]{64}, the hub lists 0{64}/,
    );
    expect(existsSync(join(cacheDir, "models--test--hash", "snapshots", sha, file))).toBe(false);
    expect(readdirSync(blobsOf("test/hash")).filter((f) => f.startsWith("0".repeat(64)))).toEqual([]);
  });

  it("names and verifies small files by their git blob id even when the listing has none (a mirror)", async () => {
    hub.omitBlobIds = true;
    const files = tinyRepo();
    hub.publish("test/mirror", files);
    const folder = await folderOf("test/mirror");
    const vocab = files.get("tokenizer/vocab.json") as Buffer;
    expect(readlinkSync(join(folder, "tokenizer/vocab.json"))).toBe(`../../../blobs/${gitBlobId(vocab)}`);
    expect(readdirSync(blobsOf("test/mirror")).filter((f) => f.includes("incomplete"))).toEqual([]);
  });

  it("still downloads where no lock file can be made (a cache whose .locks is not a folder)", async () => {
    writeFileSync(join(cacheDir, ".locks"), "not a folder");
    hub.publish("test/unlockable", tinyRepo());
    const folder = await folderOf("test/unlockable");
    expect(listFiles(folder).sort()).toEqual(ENGINE_FILES);
  });

  it("fetches a sharded checkpoint's index and the shards it names", async () => {
    const files = sd1Repo();
    const st = openSafetensors(join(SD1, UNET));
    const names = [...st.tensors.keys()];
    const shardDir = tempDir();
    const weightMap: Record<string, string> = {};
    [names.slice(0, 100), names.slice(100)].forEach((part, i) => {
      const shard = `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`;
      const tensors = Object.fromEntries(
        part.map((n) => {
          const e = st.tensors.get(n);
          weightMap[n] = shard;
          return [n, { dtype: e?.dtype ?? "F16", shape: [...(e?.shape ?? [])], data: st.read(n) }];
        }),
      );
      writeSafetensors(join(shardDir, shard), tensors);
      files.set(`unet/${shard}`, readFileSync(join(shardDir, shard)));
    });
    files.delete(UNET);
    files.set(
      "unet/diffusion_pytorch_model.safetensors.index.json",
      Buffer.from(JSON.stringify({ weight_map: weightMap })),
    );
    hub.publish("test/sharded", files);
    const folder = await folderOf("test/sharded");
    expect(
      hub
        .downloads()
        .filter((f) => f.startsWith("unet/diffusion"))
        .sort(),
    ).toEqual([
      "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
      "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
      "unet/diffusion_pytorch_model.safetensors.index.json",
    ]);
    const unet = openCheckpoint(folder).unet.weights;
    expect(unet.names().sort()).toEqual([...names].sort());
    // Offline, the sharded snapshot counts as complete.
    hub.log.length = 0;
    expect(await folderOf("test/sharded", { offline: true })).toBe(folder);
    expect(hub.log).toEqual([]);
  });

  it("logs bytes, rate and ETA while downloading when nobody watches a terminal", async () => {
    hub.publish("test/progress", tinyRepo(300_000));
    const { lines, log } = recorder();
    await folderOf("test/progress", { log, progressIntervalMs: 0 });
    const progress = lines.filter((l) => l.msg.startsWith("downloading test/progress: "));
    expect(progress.length).toBeGreaterThan(3);
    for (const line of progress) {
      expect(line.msg).toMatch(
        /^downloading test\/progress: [\d.]+ (B|KiB|MiB) of [\d.]+ (B|KiB|MiB) \(\d+ %\), [\d.]+ (B|KiB|MiB|GiB)\/s, ETA (\d+ s|\d+ min \d+ s)$/,
      );
      expect(line.fields).toMatchObject({ model: "test/progress", received: expect.any(Number) });
      expect(line.fields.etaSeconds).toEqual(expect.any(Number));
    }
    const last = progress.at(-1)?.fields;
    expect(last?.received).toBe(last?.total);
  });

  it("goes through HTTPS_PROXY/HTTP_PROXY (CONNECT), except for NO_PROXY's hosts", async () => {
    hub.publish("test/proxied", tinyRepo());
    const tunnels: string[] = [];
    const proxy: Server = createServer();
    proxy.on("connect", (req, client, head) => {
      tunnels.push(req.url ?? "");
      const [host, port] = (req.url ?? "").split(":");
      const upstream = connect(Number(port), host, () => {
        client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      const folder = await folderOf("test/proxied", { proxy: { httpProxy: proxyUrl, noProxy: "" } });
      expect(readFileSync(join(folder, UNET)).equals(tinyRepo().get(UNET) as Buffer)).toBe(true);
      expect(new Set(tunnels)).toEqual(new Set([new URL(hub.url).host, new URL(hub.cdnUrl).host]));

      tunnels.length = 0;
      hub.publish("test/direct", tinyRepo());
      await folderOf("test/direct", { proxy: { httpProxy: proxyUrl, noProxy: "example.com,127.0.0.1" } });
      expect(tunnels).toEqual([]);
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });
});

describe("resolveModel: variants, pinned revisions, offline", () => {
  function withFp16Unet(files: Map<string, Buffer>): Map<string, Buffer> {
    files.set(UNET_FP16, files.get(UNET) as Buffer);
    return files;
  }

  it("prefers a variant where the repository has it and takes the plain weights elsewhere, as diffusers", async () => {
    hub.publish("test/variant", withFp16Unet(tinyRepo()));
    const { lines, log } = recorder();
    const folder = await folderOf("test/variant", { variant: "fp16", log });
    expect(hub.downloads()).toContain(UNET_FP16);
    expect(hub.downloads()).not.toContain(UNET);
    expect(hub.downloads()).toContain("vae/diffusion_pytorch_model.safetensors");
    expect(findWeightsFile(join(folder, "unet"), "diffusion_pytorch_model", "fp16")).toBe(
      join(folder, UNET_FP16),
    );
    expect(lines.find((l) => l.msg.includes("no fp16 weights"))).toMatchObject({
      level: "info",
      msg: "test/variant has no fp16 weights for vae, text_encoder; using its other weights there",
    });
  });

  it("refuses a variant asked for by name that the repository does not have at all", async () => {
    hub.publish("test/novariant", tinyRepo());
    const err = await errorOf("test/novariant", { variant: "bf16", variantRequired: true });
    expect(err.message).toBe(
      "test/novariant has no bf16 weights (MODEL_VARIANT=bf16): set MODEL_VARIANT=auto to take the weights it has",
    );
    expect(hub.downloads().filter((f) => f.endsWith(".safetensors"))).toEqual([]);
  });

  it("downloads fp16 weights when the engine computes in fp16 (ENGINE_DTYPE=fp16, MODEL_VARIANT=auto)", async () => {
    hub.publish("test/engine-fp16", withFp16Unet(sd1Repo()));
    const sd = await StableDiffusion.load("test/engine-fp16", {
      device: "cpu",
      dtype: "fp16",
      cacheDir,
      endpoint: hub.url,
    });
    await sd.close();
    expect(hub.downloads()).toContain(UNET_FP16);
    expect(hub.downloads()).not.toContain(UNET);
  });

  it("pins a revision: a tag or an older commit, used from the cache without the hub once complete", async () => {
    const files = tinyRepo();
    const old = hub.publish("test/pinned", files);
    hub.repos.get("test/pinned")?.tags.set("v1.0", old);
    files.set(
      "scheduler/scheduler_config.json",
      Buffer.from(`${files.get("scheduler/scheduler_config.json")}\n`),
    );
    const head = hub.publish("test/pinned", files);
    expect(head).not.toBe(old);

    expect(await folderOf("test/pinned", { revision: "v1.0" })).toContain(old);
    const repo = join(cacheDir, "models--test--pinned");
    expect(readFileSync(join(repo, "refs", "v1.0"), "utf8")).toBe(old);
    hub.log.length = 0;
    const folder = await folderOf("test/pinned", { revision: old });
    expect(folder).toBe(join(repo, "snapshots", old));
    expect(hub.log).toEqual([]);
    expect(existsSync(join(repo, "refs", old))).toBe(false);
  });

  it("never calls the hub with HF_HUB_OFFLINE: the cached snapshot, or an error that says so", async () => {
    hub.publish("test/offline-mode", tinyRepo());
    const err = await errorOf("test/offline-mode", { offline: true });
    expect(err.message).toBe(
      `HF_HUB_OFFLINE is set and test/offline-mode (revision main) is not in the cache ${cacheDir}: no snapshot of revision main was recorded there; unset HF_HUB_OFFLINE to download it, or point MODEL_CACHE_DIR or HF_HUB_CACHE at the cache that holds it`,
    );
    expect(hub.log).toEqual([]);
    const folder = await folderOf("test/offline-mode");
    hub.log.length = 0;
    expect(await folderOf("test/offline-mode", { offline: true })).toBe(folder);
    expect(hub.log).toEqual([]);
  });
});
