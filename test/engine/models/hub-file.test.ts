/**
 * Single-file checkpoints named on the hub (a hub URL, or owner/name/path.safetensors) and MODEL_CONFIG as
 * a hub id: downloaded by hub.ts into the Hugging Face cache from the local fake hub, then opened as the
 * local files they are copies of.
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { ModelFileError } from "../../../src/engine/models/errors.js";
import {
  HubError,
  type ResolveOptions,
  resolveConfigs,
  resolveHubFile,
} from "../../../src/engine/models/hub.js";
import { type HubFileRef, parseHubFile } from "../../../src/engine/models/hub-ref.js";
import { openSingleFile } from "../../../src/engine/models/single-file.js";
import { FakeHub, sha256 } from "../../helpers/fake-hub.js";
import { expectSameTensors } from "../../helpers/model-files.js";
import { tempDirs } from "../../helpers/temp-dirs.js";
import { f32Bytes, writeSafetensors } from "../../helpers/write-safetensors.js";
import { writeTorchCopy } from "../../helpers/write-torch.js";

const SD2_FILE = "test/fixtures/models/sd2/single-file.safetensors";
const SD1_FILE = "test/fixtures/models/sd1/single-file.safetensors";
const SD2_MODEL = "test/fixtures/models/sd2/model";

const hub = new FakeHub();
const tempDir = tempDirs("hub-file-test-");
let cacheDir = "";
beforeAll(() => hub.start());
afterAll(() => hub.stop());
beforeEach(() => {
  cacheDir = tempDir();
  hub.log.length = 0;
});

const quiet = { info: () => {}, warn: () => {} };
const options = (extra: Partial<ResolveOptions> = {}): ResolveOptions => ({
  cacheDir,
  endpoint: hub.url,
  log: quiet,
  ...extra,
});
const apiCalls = () => hub.log.filter((r) => r.path.startsWith("/api/"));
/** The files the CDN (which serves LFS files) sent whole, not a range of. */
const wholeFiles = () =>
  hub.log.filter((r) => r.server === "cdn" && r.range === undefined).map((r) => r.file);
/** The byte ranges the CDN was asked for, by file. */
const rangesOf = (file: string) =>
  hub.log.filter((r) => r.server === "cdn" && r.file === file && r.range).map((r) => r.range);

/** The hub file `model` names; the test fails where it names none. */
function refOf(model: string): HubFileRef {
  const ref = parseHubFile(model, hub.url);
  if (!ref) throw new Error(`${model} names no hub file`);
  return ref;
}

/** Resolves a hub file and lets go of its snapshot at once: the file's path. */
async function fileOf(model: string, extra: Partial<ResolveOptions> = {}): Promise<string> {
  const resolved = await resolveHubFile(refOf(model), options(extra));
  await resolved.release();
  return resolved.folder;
}

/** The error `promise` rejects with; the test fails if it resolves. */
const errorOf = (promise: Promise<unknown>) =>
  promise.then(
    () => new Error("resolved"),
    (e: unknown) => e as Error,
  );

/** A torch.save copy of a safetensors file (the .ckpt a repository publishes beside it). */
function torchCopyOf(file: string): Buffer {
  const ckpt = join(tempDir(), "copy.ckpt");
  writeTorchCopy(file, ckpt);
  return readFileSync(ckpt);
}

/** A repository of single files, as community fine-tunes are published, with files nobody asked for. */
function singleFileRepo(): Map<string, Buffer> {
  return new Map([
    ["v2-mini.safetensors", readFileSync(SD2_FILE)],
    ["v2-mini.ckpt", torchCopyOf(SD2_FILE)],
    ["other/v1-mini.safetensors", readFileSync(SD1_FILE)],
    ["README.md", Buffer.from("# model card")],
  ]);
}

describe("hub file references", () => {
  it("reads hub URLs (blob or resolve, any revision) and owner/name/path.safetensors, and nothing else", () => {
    expect(parseHubFile("https://huggingface.co/a/b/blob/main/v1-5.safetensors")).toEqual({
      id: "a/b",
      revision: "main",
      path: "v1-5.safetensors",
    });
    expect(parseHubFile("https://hf.co/a/b/resolve/refs%2Fpr%2F3/sub/dir/x.safetensors")).toEqual({
      id: "a/b",
      revision: "refs/pr/3",
      path: "sub/dir/x.safetensors",
    });
    expect(parseHubFile(`${hub.url}/a/b/blob/v1/x.ckpt`, hub.url)).toEqual({
      id: "a/b",
      revision: "v1",
      path: "x.ckpt",
    });
    expect(parseHubFile("a/b/sub/x.safetensors")).toEqual({ id: "a/b", path: "sub/x.safetensors" });
    for (const notOne of [
      "a/b", // a repository id
      "a/b/README.md",
      "/models/x.safetensors",
      "./a/b/x.safetensors",
      "../a/b/x.safetensors",
      "a/b/../x.safetensors",
      "https://example.com/a/b/blob/main/x.safetensors", // not the hub, nor HF_ENDPOINT
      "https://huggingface.co/a/b", // a repository page
      "https://huggingface.co/a/b/tree/main/unet",
    ]) {
      expect(parseHubFile(notOne, hub.url), notOne).toBeUndefined();
    }
  });
});

describe("resolveHubFile: a single-file checkpoint from the hub", () => {
  it("downloads the one file into the standard layout, opens to bitwise the local file's tensors, and is not downloaded again", async () => {
    const sha = hub.publish("test/single", singleFileRepo());
    const url = `${hub.url}/test/single/blob/main/v2-mini.safetensors`;
    // Through the engine: MODEL as the URL.
    // Through the engine: MODEL as the URL (the tiny fixture's configs cannot be inferred from its shapes).
    const sd = await StableDiffusion.load(url, {
      device: "cpu",
      cacheDir,
      endpoint: hub.url,
      modelConfig: SD2_MODEL,
    });
    await sd.close();
    expect(sd.modelId).toBe(`${url} (config ${SD2_MODEL})`);
    // Its header was checked first (its length, then the JSON), then the file fetched whole.
    const headerBytes = readFileSync(SD2_FILE).readUInt32LE(0);
    expect(rangesOf("v2-mini.safetensors")).toEqual(["bytes=0-7", `bytes=8-${8 + headerBytes - 1}`]);
    expect(wholeFiles()).toEqual(["v2-mini.safetensors"]);

    const repo = join(cacheDir, "models--test--single");
    const file = join(repo, "snapshots", sha, "v2-mini.safetensors");
    const data = readFileSync(SD2_FILE);
    expect(lstatSync(file).isSymbolicLink()).toBe(true);
    expect(readlinkSync(file)).toBe(relative(dirname(file), join(repo, "blobs", sha256(data))));
    expect(readFileSync(file).equals(data)).toBe(true);
    expect(readdirSync(join(repo, "blobs"))).toEqual([sha256(data)]);
    expect(readFileSync(join(repo, "refs", "main"), "utf8")).toBe(sha);

    // The short form finds it in the cache: one API call, no download.
    hub.log.length = 0;
    expect(await fileOf("test/single/v2-mini.safetensors")).toBe(file);
    expect(apiCalls()).toHaveLength(1);
    expect(hub.downloads()).toEqual([]);
    // And offline, no call at all.
    hub.log.length = 0;
    expect(await fileOf("test/single/v2-mini.safetensors", { offline: true })).toBe(file);
    expect(hub.log).toEqual([]);

    const ours = openSingleFile(file, { configDir: SD2_MODEL });
    const local = openSingleFile(SD2_FILE, { configDir: SD2_MODEL });
    expectSameTensors("unet", ours.unet.weights, local.unet.weights);
    expectSameTensors("vae", ours.vae.weights, local.vae.weights);
    expectSameTensors("text_encoder", ours.textEncoder.weights, local.textEncoder.weights);
    expect(ours.unet.config).toEqual(local.unet.config);
    expect(ours.scheduler).toEqual(local.scheduler);
  });

  it("downloads a .ckpt whole (its pickle is read, never run) and opens it to the .safetensors copy's tensors", async () => {
    hub.publish("test/ckpt", singleFileRepo());
    const file = await fileOf(`${hub.url}/test/ckpt/resolve/main/v2-mini.ckpt`);
    // No header ranges: a torch.save file's directory is at its end; it is judged once here.
    expect(rangesOf("v2-mini.ckpt")).toEqual([]);
    expect(wholeFiles()).toEqual(["v2-mini.ckpt"]);
    const ckpt = openSingleFile(file, { configDir: SD2_MODEL });
    const local = openSingleFile(SD2_FILE, { configDir: SD2_MODEL });
    expectSameTensors("unet", ckpt.unet.weights, local.unet.weights);
    expectSameTensors("vae", ckpt.vae.weights, local.vae.weights);
    expectSameTensors("text_encoder", ckpt.textEncoder.weights, local.textEncoder.weights);
  });

  it("downloads at the URL's revision, or MODEL_REVISION's, and refuses both when they differ", async () => {
    const files = singleFileRepo();
    const v1 = hub.publish("test/moving-file", files);
    hub.repos.get("test/moving-file")?.tags.set("v1", v1);
    files.set("v2-mini.safetensors", readFileSync(SD1_FILE));
    const head = hub.publish("test/moving-file", files);

    const atTag = await fileOf(`${hub.url}/test/moving-file/resolve/v1/v2-mini.safetensors`);
    expect(atTag).toBe(join(cacheDir, "models--test--moving-file", "snapshots", v1, "v2-mini.safetensors"));
    expect(readFileSync(atTag).equals(readFileSync(SD2_FILE))).toBe(true);
    hub.log.length = 0;
    expect(await fileOf("test/moving-file/v2-mini.safetensors", { revision: v1 })).toBe(atTag);
    expect(hub.log).toEqual([]); // a commit complete in the cache needs no hub

    const atHead = await fileOf("test/moving-file/v2-mini.safetensors");
    expect(atHead).toContain(head);
    expect(readFileSync(atHead).equals(readFileSync(SD1_FILE))).toBe(true);

    hub.log.length = 0;
    const conflict = await errorOf(
      resolveHubFile(
        refOf(`${hub.url}/test/moving-file/blob/v1/v2-mini.safetensors`),
        options({ revision: "v2" }),
      ),
    );
    expect(conflict).toBeInstanceOf(HubError);
    expect(conflict.message).toBe(
      "MODEL names revision v1 of test/moving-file/v2-mini.safetensors but MODEL_REVISION is v2: drop one of them",
    );
    expect(hub.log).toEqual([]);
  });

  it("says in one line what is wrong: an unknown revision, a missing file or repository, a file that is no checkpoint or no SD checkpoint", async () => {
    const files = singleFileRepo();
    const notSd = join(tempDir(), "not-sd.safetensors");
    writeSafetensors(notSd, { "classifier.weight": { dtype: "F32", shape: [2], data: f32Bytes([1, 2]) } });
    files.set("not-sd.safetensors", readFileSync(notSd));
    // An SDXL file, padded so that fetching it whole would show.
    const sdxl = join(tempDir(), "sdxl.safetensors");
    writeSafetensors(sdxl, {
      "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": {
        dtype: "F32",
        shape: [2],
        data: f32Bytes([1, 2]),
      },
      "model.diffusion_model.input_blocks.0.0.weight": {
        dtype: "F32",
        shape: [65536],
        data: new Uint8Array(65536 * 4),
      },
    });
    files.set("sdxl.safetensors", readFileSync(sdxl));
    hub.publish("test/errors", files);
    const load = (model: string) =>
      errorOf(StableDiffusion.load(model, { device: "cpu", cacheDir, endpoint: hub.url }));

    const errors = {
      revision: await load(`${hub.url}/test/errors/blob/nope/v2-mini.safetensors`),
      missing: await load("test/errors/v3-mini.safetensors"),
      readme: await load(`${hub.url}/test/errors/blob/main/README.md`),
      notSd: await load("test/errors/not-sd.safetensors"),
      sdxl: await load(`${hub.url}/test/errors/resolve/main/sdxl.safetensors`),
      // A mistyped relative path reads as the short form.
      localTypo: await load("models/sd/v1.safetensors"),
    };
    for (const [what, err] of Object.entries(errors)) {
      expect(err.message, what).not.toContain("\n");
      expect(err, what).toBeInstanceOf(what === "notSd" || what === "sdxl" ? ModelFileError : HubError);
    }
    expect(errors.revision.message).toBe(
      `test/errors has no revision "nope" (HTTP 404, RevisionNotFound: Invalid rev id: nope): check the revision in MODEL's URL (a branch, tag or full commit sha)`,
    );
    expect(errors.missing.message).toBe(
      "MODEL test/errors/v3-mini.safetensors is no file on this machine, so it was taken as v3-mini.safetensors of the hub repository test/errors: test/errors has no v3-mini.safetensors at revision main; its single files are v2-mini.safetensors, v2-mini.ckpt, not-sd.safetensors, sdxl.safetensors",
    );
    expect(errors.localTypo.message).toBe(
      `MODEL models/sd/v1.safetensors is no file on this machine, so it was taken as v1.safetensors of the hub repository models/sd: models/sd was not found on ${hub.url} (HTTP 401, RepoNotFound): check MODEL for a typo; if it is private, set HF_TOKEN to a token of an account that can read it`,
    );
    expect(errors.readme.message).toBe(
      "test/errors/README.md is not a single-file checkpoint: MODEL names a hub file only as a .safetensors or .ckpt file (or give the repository id test/errors for a diffusers repository)",
    );
    expect(errors.notSd.message).toBe(
      "test/errors/not-sd.safetensors: is not a Stable Diffusion checkpoint in the original layout: it has no model.diffusion_model.input_blocks.0.0.weight",
    );
    expect(errors.sdxl.message).toBe(
      "test/errors/sdxl.safetensors: this is a Stable Diffusion XL checkpoint (it holds conditioner.embedders.0.transformer.text_model.final_layer_norm.weight); the engine supports Stable Diffusion 1.x and 2.x only",
    );
    // The README was refused before any request, the others from their headers: no file was fetched whole.
    expect(hub.log.filter((r) => r.file === "README.md")).toEqual([]);
    expect(rangesOf("sdxl.safetensors")).toHaveLength(2);
    expect(wholeFiles()).toEqual([]);
  });
});

describe("resolveConfigs: MODEL_CONFIG as a hub id", () => {
  it("downloads a diffusers repository's configs and tokenizer, no weights, and a single file opens with them", async () => {
    const repo = new Map<string, Buffer>();
    for (const e of readdirSync(SD2_MODEL, { recursive: true, withFileTypes: true })) {
      if (e.isFile()) {
        const path = join(e.parentPath, e.name);
        repo.set(relative(SD2_MODEL, path), readFileSync(path));
      }
    }
    hub.publish("test/sd2-configs", repo);
    hub.publish("test/single-cfg", singleFileRepo());

    const configs = await resolveConfigs("test/sd2-configs", options());
    await configs.release();
    expect(hub.downloads("test/sd2-configs").sort()).toEqual(
      [...repo.keys()].filter((f) => !f.endsWith(".safetensors")).sort(),
    );
    const withHub = openSingleFile(SD2_FILE, { configDir: configs.folder });
    const withLocal = openSingleFile(SD2_FILE, { configDir: SD2_MODEL });
    expect(withHub.unet.config).toEqual(withLocal.unet.config);
    expect(withHub.textEncoder.config).toEqual(withLocal.textEncoder.config);
    expect(withHub.scheduler).toEqual(withLocal.scheduler);
    expect(withHub.tokenizer.encode("a photo of a cat").ids).toEqual(
      withLocal.tokenizer.encode("a photo of a cat").ids,
    );

    // Through the engine, beside a hub single file: the configs come from the cache.
    hub.log.length = 0;
    const sd = await StableDiffusion.load("test/single-cfg/v2-mini.safetensors", {
      device: "cpu",
      cacheDir,
      endpoint: hub.url,
      modelConfig: "test/sd2-configs",
    });
    await sd.close();
    expect(sd.modelId).toBe("test/single-cfg/v2-mini.safetensors (config test/sd2-configs)");
    expect(hub.downloads("test/sd2-configs")).toEqual([]);
    expect(wholeFiles()).toEqual(["v2-mini.safetensors"]);

    expect((await errorOf(resolveConfigs("test/no-such-configs", options()))).message).toBe(
      `test/no-such-configs was not found on ${hub.url} (HTTP 401, RepoNotFound): check MODEL_CONFIG for a typo; if it is private, set HF_TOKEN to a token of an account that can read it`,
    );
    const neither = await errorOf(
      StableDiffusion.load(SD2_FILE, { device: "cpu", cacheDir, modelConfig: "./no/such/folder" }),
    );
    expect(neither.message).toMatch(
      /^MODEL_CONFIG \.\/no\/such\/folder is neither a folder nor a hub model id/,
    );
  });
});
