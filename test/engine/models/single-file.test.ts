/**
 * Single-file (ldm layout) checkpoints: each fixture's `single-file.safetensors` was written from its
 * diffusers folder by diffusers' own scripts/convert_diffusers_to_original_stable_diffusion.py
 * (test/fixtures/models/README.md says how), so the renaming is checked against diffusers' mapping, not
 * against itself: opened with MODEL_CONFIG = the fixture folder, every tensor the folder has must come back
 * under its diffusers name with the same dtype, shape and bytes — and nothing more.
 */

import { createHash } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLIP_TOKENIZER_DIR } from "../../../src/assets.js";
import { goldenUnetArgs } from "../../../src/cli/bench/golden.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import { isSingleFile, openSingleFile } from "../../../src/engine/models/single-file.js";
import { ClipTokenizer } from "../../../src/engine/models/tokenizer.js";
import {
  expectClose,
  type Fixture,
  fixturesWith,
  type GoldenJson,
  type Tolerance,
} from "../../helpers/golden.js";
import {
  clipTable,
  extras,
  openClipTable,
  type Table,
  unetTable,
  vaeTable,
} from "../../helpers/ldm-tables.js";
import { expectSameTensors, modelFileErrorOf, scratchCopies } from "../../helpers/model-files.js";
import { assembleSingleFile, type SingleFileManifest } from "../../helpers/single-file-fixtures.js";
import { writeSafetensors } from "../../helpers/write-safetensors.js";
import { writeTorchCopy } from "../../helpers/write-torch.js";

/** The parity suite's bound for one float32 network call against torch's float32 one (parity.test.ts). */
const FORWARD: Tolerance = { max: 1e-4, why: "one float32 network call against torch's float32 one" };

const scratch = scratchCopies("single-file-");
const singleFile = (f: Fixture) => join(f.dir, "single-file.safetensors");

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

for (const f of fixturesWith("golden")) {
  describe(`single-file checkpoint: ${f.name}`, () => {
    it("is the conversion script's output, rebuilt from model/ to the SHA-256 the fixtures' README records", () => {
      const manifest = JSON.parse(
        readFileSync(join(f.dir, "single-file.json"), "utf8"),
      ) as SingleFileManifest;
      const readme = readFileSync("test/fixtures/models/README.md", "utf8");
      const recorded = new RegExp(`${f.name}: \\d+ tensors[^;]*?sha256\\s+([0-9a-f]{64})`).exec(readme)?.[1];
      expect(recorded, "README's hash of the script's output").toMatch(/^[0-9a-f]{64}$/);
      expect(manifest.sha256).toBe(recorded);
      // What the tests open is that file: rebuilt by the global setup, or assembled here again.
      expect(sha256(readFileSync(singleFile(f)))).toBe(recorded);
      expect(sha256(assembleSingleFile(manifest, f.modelDir))).toBe(recorded);
      // The same tensors in another order: the rebuild refuses, naming both hashes.
      const [first, ...rest] = manifest.pieces;
      const swapped = { ...manifest, pieces: [...rest, first] } as SingleFileManifest;
      expect(() => assembleSingleFile(swapped, f.modelDir)).toThrow(
        /sha256 [0-9a-f]{64}; the conversion script's output is/,
      );
    });

    it("every diffusers tensor of the folder, bitwise, under the same name (MODEL_CONFIG = the folder)", () => {
      const ours = openSingleFile(singleFile(f), { configDir: f.modelDir });
      const folder = openCheckpoint(f.modelDir);
      expectSameTensors("unet", ours.unet.weights, folder.unet.weights);
      expectSameTensors("vae", ours.vae.weights, folder.vae.weights);
      expectSameTensors("text_encoder", ours.textEncoder.weights, folder.textEncoder.weights);
      expect(ours.unet.config).toEqual(folder.unet.config);
      expect(ours.scheduler).toEqual(folder.scheduler);
    });

    it("the bundled CLIP vocabulary tokenizes every golden prompt as the checkpoint's tokenizer", () => {
      const json = f.data("golden").json as unknown as GoldenJson;
      const pad = openCheckpoint(f.modelDir).tokenizer.padId === 0 ? "!" : "<|endoftext|>";
      const bundled = ClipTokenizer.fromFolder(CLIP_TOKENIZER_DIR, 77, pad);
      json.prompts.forEach((prompt, i) => {
        expect(bundled.encode(prompt).ids, `prompt ${i}`).toEqual(json.input_ids[i]);
      });
    });

    describe("the engine on the single file matches diffusers' goldens", () => {
      const g = f.data("golden");
      let sd: StableDiffusion;
      beforeAll(async () => {
        sd = await StableDiffusion.load(singleFile(f), {
          device: "cpu",
          dtype: "fp32",
          modelConfig: f.modelDir,
        });
      });
      afterAll(async () => {
        await sd?.release();
      });

      it("text encoder, one UNet call, VAE encode and decode", async () => {
        const json = g.json as unknown as GoldenJson;
        const n = g.shape("text_encoder.input_ids")[0] as number;
        const text = await sd.encodeText(json.prompts.slice(0, n));
        expectClose("text_encoder.last_hidden_state", text, g.f32("text_encoder.last_hidden_state"), FORWARD);
        const out = await sd.predictNoise(...goldenUnetArgs(g));
        expectClose("unet.out", out, g.f32("unet.out"), FORWARD);
        const [, , ih, iw] = g.shape("vae.image") as number[];
        const sf = openCheckpoint(f.modelDir).vae.config.scaling_factor;
        const { mean, size } = await sd.encodeImage(g.f32("vae.image"), ih as number, iw as number);
        expectClose(
          "vae.encode.mean",
          mean,
          g.f32("vae.encode.mean").map((x) => x * sf),
          FORWARD,
        );
        const image = await sd.decodeLatents(
          g.f32("vae.encode.mean").map((x) => x * sf),
          size,
        );
        expectClose("vae.decode.out", image, g.f32("vae.decode.out"), FORWARD);
      });
    });
  });
}

describe("single-file MODEL", () => {
  it("is told from a folder or a hub id by its extension", () => {
    expect(isSingleFile("/models/v1-5-pruned-emaonly.safetensors")).toBe(true);
    expect(isSingleFile("/models/sd-v1-4.ckpt")).toBe(true);
    expect(isSingleFile("stable-diffusion-v1-5/stable-diffusion-v1-5")).toBe(false);
    expect(isSingleFile("/models/sd15")).toBe(false);
  });

  it("is read when the graph asks for a tensor, not when opened (a large file streams)", () => {
    const dir = scratch("test/fixtures/models/sd2");
    const file = join(dir, "single-file.safetensors");
    const ckpt = openSingleFile(file, { configDir: join(dir, "model") });
    const name = "encoder.layers.1.self_attn.k_proj.weight";
    const entry = ckpt.textEncoder.weights.info(name);
    const before = ckpt.textEncoder.weights.data(name).bytes();
    // Overwrite that tensor's bytes in the file after opening: k is the second third of in_proj_weight.
    const fused = openSafetensors(file).tensors.get(
      "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
    );
    if (!fused) throw new Error("fixture lacks resblocks.1's in_proj_weight");
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.alloc(entry.byteLength, 0x3c), 0, entry.byteLength, fused.offset + entry.byteLength);
    closeSync(fd);
    const after = ckpt.textEncoder.weights.data(name).bytes();
    expect(Buffer.from(before).equals(Buffer.from(after))).toBe(false);
    expect(after.every((b) => b === 0x3c)).toBe(true);
  });

  it("a missing file says it is read from the local disk", () => {
    expect(modelFileErrorOf(() => openSingleFile("/nowhere/model.safetensors")).message).toMatch(
      /^\/nowhere\/model\.safetensors: file not found \(a single-file MODEL is read from this machine's disk; one on the hub is named by its URL/,
    );
  });

  it("a .ckpt (torch.save) opens to the same tensors as the safetensors file, read without running its pickle", () => {
    const dir = mkdtempSync(join(tmpdir(), "single-file-ckpt-"));
    try {
      const source = "test/fixtures/models/sd2/single-file.safetensors";
      const ckptFile = join(dir, "sd2.ckpt");
      writeTorchCopy(source, ckptFile);
      const config = { configDir: "test/fixtures/models/sd2/model" };
      const ckpt = openSingleFile(ckptFile, config);
      const st = openSingleFile(source, config);
      expectSameTensors("unet", ckpt.unet.weights, st.unet.weights);
      expectSameTensors("vae", ckpt.vae.weights, st.vae.weights);
      expectSameTensors("text_encoder", ckpt.textEncoder.weights, st.textEncoder.weights);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A small file of the table's tensors, float32, filled with a fixed smooth pattern (no reference: it must run). */
function writeTable(file: string, table: Table): void {
  let k = 0;
  const tensors = Object.fromEntries(
    [...table].map(([name, shape]) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const values = Float32Array.from({ length: n }, () => 0.05 * Math.sin(++k));
      return [name, { dtype: "F32", shape, data: new Uint8Array(values.buffer) }];
    }),
  );
  writeSafetensors(file, tensors);
}

describe("a single file without MODEL_CONFIG: configs inferred from its shapes, CLIP's vocabulary from assets/", () => {
  const tmp = mkdtempSync(join(tmpdir(), "single-file-inferred-"));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const small = {
    sd1: () => {
      const t: Table = new Map();
      unetTable(t, { ch: 32, mult: [1, 1], res: 1, ctx: 64, linear: false });
      vaeTable(t, { ch: 32, mult: [1, 1], res: 1 });
      clipTable(t, { width: 64, layers: 2, mlp: 128 });
      extras(t);
      return t;
    },
    // SD 2.x heads are 64 channels wide: levels of 64.
    sd2: () => {
      const t: Table = new Map();
      unetTable(t, { ch: 64, mult: [1, 1], res: 1, ctx: 64, linear: true });
      vaeTable(t, { ch: 32, mult: [1, 1], res: 1 });
      openClipTable(t, { width: 64, layers: 3, mlp: 128 });
      extras(t);
      return t;
    },
  };
  for (const f of fixturesWith("golden")) {
    const family = f.name === "sd2" ? "sd2" : "sd1";
    it(`${f.name}-shaped: the engine opens it, tokenizes as the fixture, encodes, denoises and decodes`, async () => {
      const file = join(tmp, `${family}.safetensors`);
      writeTable(file, small[family]());
      const sd = await StableDiffusion.load(file, { device: "cpu", dtype: "fp32" });
      try {
        expect(sd.predictionType).toBe(family === "sd2" ? "v_prediction" : "epsilon");
        const json = f.data("golden").json as unknown as GoldenJson;
        json.prompts.forEach((prompt, i) => {
          expect(sd.tokenize(prompt).ids, `prompt ${i}`).toEqual(json.input_ids[i]);
        });
        const context = await sd.encodeText(["a photo of a cat"]);
        expect(context.length).toBe(77 * 64);
        const size = { height: 8, width: 8 };
        const latents = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.cos(i));
        const out = await sd.predictNoise(latents, size, 500, context);
        const image = await sd.decodeLatents(out, size);
        expect([out.every(Number.isFinite), image.every(Number.isFinite), image.length]).toEqual([
          true,
          true,
          3 * 16 * 16,
        ]);
      } finally {
        await sd.release();
      }
    });
  }
});
