import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { type DownloadProgress, HubError, resolveModel } from "../../../src/engine/models/hub.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import { writeSafetensors } from "../../helpers/write-safetensors.js";

const SD1 = "test/fixtures/models/sd1/model";
const SHA = "0123456789abcdef0123456789abcdef01234567";
const TOKEN = "hf_test_secret_token";

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)));
}

/** What the fake hub serves for one repository: path → bytes, and how to misbehave. */
interface Repo {
  files: Map<string, Buffer>;
  gated?: boolean;
  /** Paths whose first download is cut off after this many bytes. */
  dropAfter?: Map<string, number>;
  /** Paths whose listed sha256 is wrong. */
  badHash?: Set<string>;
  /** Redirect safetensors downloads to this base URL, as the hub sends LFS files to its CDN. */
  cdn?: string;
}

/** A local stand-in for huggingface.co: the revision API and resolve URLs with Range support. */
class FakeHub {
  readonly repos = new Map<string, Repo>();
  readonly log: Array<{ path: string; range?: string; auth?: string }> = [];
  private server!: Server;
  url = "";

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", this.url);
    this.log.push({ path: url.pathname, range: req.headers.range, auth: req.headers.authorization });
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const repo = this.repos.get((api ?? resolve)?.[1] ?? "");
    if (!repo) return void res.writeHead(404).end("Repository not found");
    if (repo.gated && req.headers.authorization !== `Bearer ${TOKEN}`)
      return void res.writeHead(401).end("gated");
    if (api) {
      const siblings = [...repo.files].map(([rfilename, data]) => {
        const sha256 = createHash("sha256").update(data).digest("hex");
        const lfs =
          rfilename.endsWith(".safetensors") || rfilename.endsWith(".bin") || rfilename.endsWith(".ckpt");
        return lfs
          ? {
              rfilename,
              size: data.length,
              lfs: { sha256: repo.badHash?.has(rfilename) ? "0".repeat(64) : sha256, size: data.length },
            }
          : { rfilename, size: data.length };
      });
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ id: api[1], sha: SHA, siblings }));
    }
    const path = decodeURIComponent(resolve?.[3] ?? "");
    if (repo.cdn && path.endsWith(".safetensors")) {
      return void res.writeHead(302, { location: `${repo.cdn}${url.pathname}` }).end();
    }
    const data = repo.files.get(path);
    if (!data || resolve?.[2] !== SHA) return void res.writeHead(404).end("Entry not found");
    const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? "")?.[1] ?? 0);
    if (start >= data.length && start > 0) return void res.writeHead(416).end();
    const body = data.subarray(start);
    res.writeHead(start > 0 ? 206 : 200, {
      "content-length": body.length,
      ...(start > 0 ? { "content-range": `bytes ${start}-${data.length - 1}/${data.length}` } : {}),
    });
    const drop = repo.dropAfter?.get(path);
    if (drop !== undefined) {
      repo.dropAfter?.delete(path);
      res.write(body.subarray(0, drop), () => res.destroy());
      return;
    }
    res.end(body);
  }
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

/** The URL of a local port nothing listens on (connections are refused). */
async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

const hub = new FakeHub();
let cacheDir = "";
beforeAll(() => hub.start());
afterAll(() => hub.stop());
beforeEach(() => {
  cacheDir = mkdtempSync(join(tmpdir(), "hub-test-"));
  hub.log.length = 0;
  return () => rmSync(cacheDir, { recursive: true, force: true });
});

const downloads = () =>
  hub.log.filter((r) => r.path.includes("/resolve/")).map((r) => r.path.split(`/resolve/${SHA}/`)[1]);

describe("resolveModel", () => {
  it("returns a local folder unchanged and refuses strings that are neither", async () => {
    expect(await resolveModel(SD1, { cacheDir })).toBe(SD1);
    await expect(resolveModel("not a model", { cacheDir })).rejects.toThrow(
      /neither an existing folder nor a hub model id/,
    );
  });

  it("downloads only the files the engine reads, verified, into an openable folder", async () => {
    hub.repos.set("test/sd1", { files: sd1Repo() });
    const events: DownloadProgress[] = [];
    const folder = await resolveModel("test/sd1", {
      cacheDir,
      endpoint: hub.url,
      onProgress: (p) => events.push(p),
    });
    expect(folder).toBe(join(cacheDir, "test--sd1", "snapshots", SHA));
    const expected = listFiles(SD1).sort();
    expect(downloads().sort()).toEqual(expected);
    expect(
      listFiles(folder)
        .filter((f) => f !== ".complete")
        .sort(),
    ).toEqual(expected);
    for (const f of expected)
      expect(readFileSync(join(folder, f)).equals(readFileSync(join(SD1, f)))).toBe(true);
    const ckpt = openCheckpoint(folder);
    expect(ckpt.tokenizer.encode("a photo of a cat").ids.slice(0, 7)).toEqual([
      49406, 320, 1125, 539, 320, 2368, 49407,
    ]);
    // Progress ends at the total of the weight batch.
    const last = events.at(-1);
    expect(last?.received).toBe(last?.total);
    expect(events.some((e) => e.file === "unet/diffusion_pytorch_model.safetensors")).toBe(true);

    // A second start finds the complete snapshot: one API call, no downloads.
    hub.log.length = 0;
    expect(await resolveModel("test/sd1", { cacheDir, endpoint: hub.url })).toBe(folder);
    expect(downloads()).toEqual([]);
    // With the hub unreachable, the cached snapshot is used.
    expect(await resolveModel("test/sd1", { cacheDir, endpoint: await closedPortUrl() })).toBe(folder);
  });

  it("lets one of several concurrent starts download while the others wait, and takes over a dead lock", async () => {
    hub.repos.set("test/shared", { files: sd1Repo() });
    const folders = await Promise.all(
      [1, 2, 3].map(() => resolveModel("test/shared", { cacheDir, endpoint: hub.url })),
    );
    expect(new Set(folders).size).toBe(1);
    const fetched = downloads();
    expect(fetched.sort()).toEqual(listFiles(SD1).sort());

    hub.repos.set("test/stale", { files: sd1Repo() });
    const lock = join(cacheDir, "test--stale", "snapshots", `${SHA}.lock`);
    mkdirSync(lock, { recursive: true });
    writeFileSync(join(lock, "pid"), "4194303"); // the highest pid Linux allows: no live process holds it here
    const folder = await resolveModel("test/stale", { cacheDir, endpoint: hub.url });
    expect(existsSync(join(folder, ".complete"))).toBe(true);
    expect(existsSync(lock)).toBe(false);
  });

  it("prefers the fp16 variant when asked for it", async () => {
    const files = sd1Repo();
    files.set(
      "unet/diffusion_pytorch_model.fp16.safetensors",
      files.get("unet/diffusion_pytorch_model.safetensors") as Buffer,
    );
    hub.repos.set("test/variant", { files });
    const folder = await resolveModel("test/variant", { cacheDir, endpoint: hub.url, variant: "fp16" });
    expect(downloads()).toContain("unet/diffusion_pytorch_model.fp16.safetensors");
    expect(downloads()).not.toContain("unet/diffusion_pytorch_model.safetensors");
    expect(downloads()).toContain("vae/diffusion_pytorch_model.safetensors");
    expect(openCheckpoint(folder, { variant: "fp16" }).unet.weightsFile).toMatch(/\.fp16\.safetensors$/);
  });

  it("fetches a sharded checkpoint's index and the shards it names", async () => {
    const files = sd1Repo();
    const st = openSafetensors(join(SD1, "unet/diffusion_pytorch_model.safetensors"));
    const names = [...st.tensors.keys()];
    const shardDir = mkdtempSync(join(cacheDir, "shards-"));
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
    files.delete("unet/diffusion_pytorch_model.safetensors");
    files.set(
      "unet/diffusion_pytorch_model.safetensors.index.json",
      Buffer.from(JSON.stringify({ weight_map: weightMap })),
    );
    hub.repos.set("test/sharded", { files });
    const folder = await resolveModel("test/sharded", { cacheDir, endpoint: hub.url });
    expect(
      downloads()
        .filter((f) => f?.startsWith("unet/diffusion"))
        .sort(),
    ).toEqual([
      "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
      "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
      "unet/diffusion_pytorch_model.safetensors.index.json",
    ]);
    const unet = openCheckpoint(folder).unet.weights;
    expect(unet.names().sort()).toEqual([...names].sort());
    const last = names.at(-1) as string;
    expect(Buffer.from(unet.data(last).bytes()).equals(Buffer.from(st.read(last)))).toBe(true);
  });

  it("resumes a dropped connection with a Range request", async () => {
    const file = "unet/diffusion_pytorch_model.safetensors";
    hub.repos.set("test/drop", { files: sd1Repo(), dropAfter: new Map([[file, 1_000_000]]) });
    const folder = await resolveModel("test/drop", { cacheDir, endpoint: hub.url });
    const requests = hub.log.filter((r) => r.path.endsWith(file));
    expect(requests).toHaveLength(2);
    expect(requests[0]?.range).toBeUndefined();
    // The resumed request starts where the received part ends (bytes in flight at the drop are lost).
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(requests[1]?.range ?? "")?.[1]);
    expect(resumedAt).toBeGreaterThan(500_000);
    expect(resumedAt).toBeLessThanOrEqual(1_000_000);
    expect(readFileSync(join(folder, file)).equals(readFileSync(join(SD1, file)))).toBe(true);
  });

  it("resumes a .part file left by an earlier run", async () => {
    const file = "vae/diffusion_pytorch_model.safetensors";
    hub.repos.set("test/part", { files: sd1Repo() });
    const dir = join(cacheDir, "test--part", "snapshots", SHA, "vae");
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, "diffusion_pytorch_model.safetensors.part"),
      readFileSync(join(SD1, file)).subarray(0, 12345),
    );
    const folder = await resolveModel("test/part", { cacheDir, endpoint: hub.url });
    expect(hub.log.filter((r) => r.path.endsWith(file)).map((r) => r.range)).toEqual(["bytes=12345-"]);
    expect(statSync(join(folder, file)).size).toBe(statSync(join(SD1, file)).size);
    expect(existsSync(join(folder, `${file}.part`))).toBe(false);
  });

  it("follows the hub's redirects to its CDN, resuming there, without sending the token along", async () => {
    const cdn = new FakeHub();
    await cdn.start();
    try {
      const file = "unet/diffusion_pytorch_model.safetensors";
      cdn.repos.set("test/cdn", { files: sd1Repo(), dropAfter: new Map([[file, 700_000]]) });
      hub.repos.set("test/cdn", { files: sd1Repo(), gated: true, cdn: cdn.url });
      const folder = await resolveModel("test/cdn", { cacheDir, endpoint: hub.url, token: TOKEN });
      expect(readFileSync(join(folder, file)).equals(readFileSync(join(SD1, file)))).toBe(true);
      const atCdn = cdn.log.filter((r) => r.path.endsWith(file));
      expect(atCdn).toHaveLength(2);
      expect(atCdn[1]?.range).toMatch(/^bytes=\d+-$/);
      expect(cdn.log.every((r) => r.auth === undefined)).toBe(true);
      expect(cdn.log.map((r) => r.path.split(`/resolve/${SHA}/`)[1]).sort()).toEqual(
        listFiles(SD1)
          .filter((f) => f.endsWith(".safetensors"))
          .concat(file)
          .sort(),
      );
    } finally {
      await cdn.stop();
    }
  });

  it("refuses a file whose sha256 does not match and leaves nothing in its place", async () => {
    const file = "text_encoder/model.safetensors";
    hub.repos.set("test/hash", { files: sd1Repo(), badHash: new Set([file]) });
    const err = await resolveModel("test/hash", { cacheDir, endpoint: hub.url }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubError);
    expect((err as Error).message).toMatch(
      /test\/hash\/text_encoder\/model\.safetensors failed verification: sha256 [0-9a-f]{64}, the hub lists 0{64}/,
    );
    const snapshot = join(cacheDir, "test--hash", "snapshots", SHA);
    expect(existsSync(join(snapshot, file))).toBe(false);
    expect(existsSync(join(snapshot, `${file}.part`))).toBe(false);
    expect(existsSync(join(snapshot, ".complete"))).toBe(false);
  });

  it("explains a gated repository without a token, and sends the token as a Bearer header", async () => {
    hub.repos.set("test/gated", { files: sd1Repo(), gated: true });
    const err = await resolveModel("test/gated", { cacheDir, endpoint: hub.url }).catch((e: unknown) => e);
    expect((err as Error).message).toBe(
      "test/gated is gated or private (HTTP 401): set HF_TOKEN to an access token of an account that accepted its licence",
    );
    const wrong = await resolveModel("test/gated", { cacheDir, endpoint: hub.url, token: "hf_wrong" }).catch(
      (e: unknown) => e,
    );
    expect((wrong as Error).message).toMatch(
      /refused access to test\/gated \(HTTP 401\) with the HF_TOKEN given/,
    );
    expect((wrong as Error).message).not.toContain("hf_wrong");
    await resolveModel("test/gated", { cacheDir, endpoint: hub.url, token: TOKEN });
    expect(hub.log.filter((r) => r.auth === `Bearer ${TOKEN}`).length).toBeGreaterThan(10);
  });

  it("names a missing repository, and refuses other model families before fetching weights", async () => {
    await expect(resolveModel("test/missing", { cacheDir, endpoint: hub.url })).rejects.toThrow(
      /test\/missing \(revision main\) or its model_index\.json was not found on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/,
    );
    const down = await closedPortUrl();
    await expect(resolveModel("test/offline", { cacheDir, endpoint: down })).rejects.toThrow(
      `cannot reach ${down} for test/offline (ECONNREFUSED); check HF_ENDPOINT and the network`,
    );
    const files = sd1Repo();
    const index = JSON.parse((files.get("model_index.json") as Buffer).toString());
    files.set(
      "model_index.json",
      Buffer.from(JSON.stringify({ ...index, _class_name: "StableDiffusionXLPipeline" })),
    );
    hub.repos.set("test/sdxl", { files });
    await expect(resolveModel("test/sdxl", { cacheDir, endpoint: hub.url })).rejects.toThrow(
      /Stable Diffusion XL/,
    );
    expect(downloads()).toEqual(["model_index.json"]);
  });

  it("refuses a repository that ships only pickled weights", async () => {
    const files = sd1Repo();
    files.delete("unet/diffusion_pytorch_model.safetensors");
    hub.repos.set("test/pickle", { files });
    await expect(resolveModel("test/pickle", { cacheDir, endpoint: hub.url })).rejects.toThrow(
      /ships unet only as PyTorch pickles \(unet\/diffusion_pytorch_model\.bin\)/,
    );
  });
});
