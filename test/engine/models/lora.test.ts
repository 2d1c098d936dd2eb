/**
 * LoRA on the fixture UNet (sd1): the peft init leaves the UNet unchanged, a non-zero adapter changes it,
 * and the loss graph's LoRA gradients match central finite differences.
 */

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import {
  isLoraTarget,
  LoraFileError,
  type LoraWeights,
  newLoraWeights,
} from "../../../src/engine/models/lora.js";
import { relError } from "../../helpers/golden.js";
import { tempDirs } from "../../helpers/temp-dirs.js";
import { type TestTensor, writeSafetensors } from "../../helpers/write-safetensors.js";
import { writeTorchCopy } from "../../helpers/write-torch.js";

const tempDir = tempDirs("lora-file-");

const MODEL = "test/fixtures/models/sd1/model";

/** Deterministic N(0,1)-ish values for test inputs. */
function noise(n: number, seed: number): Float32Array {
  let s = seed;
  const u = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s + 1) / 4294967297;
  };
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

function mapLora(
  l: LoraWeights,
  f: (x: Float32Array, which: "down" | "up", path: string) => Float32Array,
): LoraWeights {
  const out: LoraWeights = new Map();
  for (const [path, m] of l) out.set(path, { ...m, down: f(m.down, "down", path), up: f(m.up, "up", path) });
  return out;
}

describe("LoRA on the UNet attention projections", () => {
  let sd: StableDiffusion;
  const ls = 8;
  const latents = noise(4 * ls * ls, 1);

  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("targets to_q, to_k, to_v and to_out.0 of every attn1/attn2, with peft's init", () => {
    const lora = sd.newLora(4, 8, 7);
    // sd1: 16 transformer blocks (3 down levels × 2, mid 1, 3 up levels × 3) × (attn1, attn2) × 4 projections.
    expect(lora.size).toBe(16 * 2 * 4);
    for (const [path, m] of lora) {
      expect(isLoraTarget(path)).toBe(true);
      expect(m.down.length).toBe(4 * m.inF);
      expect(m.up.every((v) => v === 0)).toBe(true);
      const bound = 1 / Math.sqrt(m.inF);
      expect(m.down.every((v) => Math.abs(v) <= bound)).toBe(true);
      expect(m.down.some((v) => v !== 0)).toBe(true);
    }
    // Seeded: the same seed gives the same adapter, another seed another one.
    const again = sd.newLora(4, 8, 7);
    const other = sd.newLora(4, 8, 8);
    const key = [...lora.keys()][0] as string;
    expect(again.get(key)?.down).toEqual(lora.get(key)?.down);
    expect(other.get(key)?.down).not.toEqual(lora.get(key)?.down);
  });

  it("refuses a bad rank or alpha with a clear message", () => {
    expect(() => newLoraWeights([], 0, 1, 0)).toThrow(/rank must be a positive integer/);
    expect(() => newLoraWeights([], 4, 0, 0)).toThrow(/alpha must be positive/);
  });

  it("a fresh adapter (B = 0) leaves the UNet output unchanged; a non-zero one changes it", async () => {
    const context = await sd.encodeText(["a photo of a cat"]);
    const plain = await sd.predictNoise(latents, { height: ls, width: ls }, 500, context);
    const lora = sd.newLora(4, 4, 1);
    const withZero = await sd.predictNoise(latents, { height: ls, width: ls }, 500, context, { lora });
    expect(relError(withZero, plain)).toBeLessThan(1e-6);
    const bumped = mapLora(lora, (x, which) => (which === "up" ? noise(x.length, 9).map((v) => 0.1 * v) : x));
    const changed = await sd.predictNoise(latents, { height: ls, width: ls }, 500, context, { lora: bumped });
    expect(relError(changed, plain)).toBeGreaterThan(1e-3);
  });

  it("d loss / d LoRA matches central finite differences along the gradient and a mixed direction", async () => {
    // 32×32 latents: at 8×8 the fixture UNet's GroupNorms see 2 values per group at the 1×1 bottom level,
    // which makes the loss so curved that no finite-difference step is both linear and above float32 noise.
    const size = 32;
    const n = 4 * size * size;
    const context = await sd.encodeText(["a photo of a cat"]);
    // Non-zero B so that gradients flow into A too.
    const lora = mapLora(sd.newLora(2, 2, 3), (x, which, path) =>
      which === "up" ? noise(x.length, path.length).map((v) => 0.05 * v) : x,
    );
    const args = {
      latents0: noise(n, 2),
      size: { height: size, width: size },
      noise: noise(n, 3),
      t: [500],
      context,
      wrt: ["lora"] as const,
    };
    const { loss, dLora } = await sd.lossAndGrads({ ...args, lora });
    if (!dLora) throw new Error("no LoRA gradients returned");
    const flat = (l: LoraWeights) => Float32Array.from([...l.values()].flatMap((m) => [...m.down, ...m.up]));
    const g = flat(dLora);
    const gNorm = Math.hypot(...g);
    const unit = (x: Float32Array) => {
      const norm = Math.hypot(...x);
      return x.map((v) => v / norm);
    };
    const random = unit(noise(g.length, 11));
    const directions = [unit(g), unit(g.map((v, i) => v / gNorm + (random[i] as number)))];
    // A step that moves the loss by ~1e-4 of itself: ~1000 float32 ulps, still deep in the linear regime.
    const h = (1e-4 * loss) / gNorm;
    for (const u of directions) {
      const along = (sign: number) => {
        let k = 0;
        return mapLora(lora, (x) => x.map((v) => v + sign * h * (u[k++] as number)));
      };
      const analytic = g.reduce((s, v, i) => s + v * (u[i] as number), 0);
      const plus = await sd.lossAndGrads({ ...args, lora: along(1) });
      const minus = await sd.lossAndGrads({ ...args, lora: along(-1) });
      const numeric = (plus.loss - minus.loss) / (2 * h);
      // Stated tolerance: 1 % (float32 loss differences of ~1000 ulps, central differences).
      expect(Math.abs(analytic - numeric) / Math.abs(analytic)).toBeLessThan(1e-2);
    }
  });
});

describe("LoRA files: peft, diffusers and kohya names", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  const f32 = (shape: number[], data: Float32Array): TestTensor => ({
    dtype: "F32",
    shape,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  });
  const peft = (p: string, part: "down" | "up") => `${p}.lora_${part === "down" ? "A" : "B"}.weight`;
  const kohyaName = (p: string) => `lora_unet_${p.replaceAll(".", "_")}`;
  /** `lora`'s tensors as `name(path, "down" | "up")` names them; a module `keep` rejects is left out. */
  function tensorsOf(
    lora: LoraWeights,
    name: (path: string, part: "down" | "up") => string,
    keep: (path: string) => boolean = () => true,
  ): Record<string, TestTensor> {
    const tensors: Record<string, TestTensor> = {};
    for (const [path, m] of lora) {
      if (!keep(path)) continue;
      tensors[name(path, "down")] = f32([m.rank, m.inF], m.down);
      tensors[name(path, "up")] = f32([m.outF, m.rank], m.up);
    }
    return tensors;
  }
  /** A rank-2 adapter with distinct values on every module, as `name(path, "down" | "up")` names it. */
  function write(
    name: (path: string, part: "down" | "up") => string,
    extra: Record<string, TestTensor> = {},
    metadata?: Record<string, string>,
  ): { file: string; lora: LoraWeights } {
    const lora = mapLora(sd.newLora(2, 2, 5), (x, which, path) =>
      which === "up" ? noise(x.length, path.length) : x,
    );
    const file = join(tempDir(), "lora.safetensors");
    writeSafetensors(file, { ...tensorsOf(lora, name), ...extra }, (h) => {
      if (metadata) h.__metadata__ = metadata;
    });
    return { file, lora };
  }
  const same = (a: LoraWeights, b: LoraWeights, alpha: number) => {
    expect([...a.keys()]).toEqual([...b.keys()]);
    for (const [path, m] of b) {
      const got = a.get(path);
      expect(got?.down, path).toEqual(m.down);
      expect(got?.up, path).toEqual(m.up);
      expect(got?.alpha, path).toBe(alpha);
      expect(got?.rank).toBe(2);
    }
  };

  it("reads peft's lora_A/lora_B names (bare, under unet., with peft's adapter name) with the given alpha", () => {
    for (const prefix of ["", "unet.", "base_model.model."]) {
      const { file, lora } = write((p, part) => `${prefix}${p}.lora_${part === "down" ? "A" : "B"}.weight`);
      same(sd.loadLora(file, { alpha: 8 }), lora, 8);
    }
    const { file, lora } = write((p, part) => `${p}.lora_${part === "down" ? "A" : "B"}.default.weight`);
    // No alpha given or in the file: alpha = rank, scale 1 (diffusers' convention).
    same(sd.loadLora(file), lora, 2);
  });

  it("reads diffusers' attention-processor names and kohya's names with their per-module alpha", () => {
    const proc = write((p, part) => {
      const m = p.match(/^(.+)\.(to_q|to_k|to_v|to_out\.0)$/) as RegExpMatchArray;
      return `unet.${m[1]}.processor.${(m[2] as string).replace(".0", "")}_lora.${part}.weight`;
    });
    same(sd.loadLora(proc.file, { alpha: 4 }), proc.lora, 4);
    // diffusers saved these as pytorch_lora_weights.bin: the same adapter from a torch.save file.
    const bin = join(tempDir(), "pytorch_lora_weights.bin");
    writeTorchCopy(proc.file, bin);
    same(sd.loadLora(bin, { alpha: 4 }), proc.lora, 4);
    const alphas: Record<string, TestTensor> = {};
    for (const p of sd.newLora(2, 2, 5).keys()) alphas[`${kohyaName(p)}.alpha`] = f32([], Float32Array.of(6));
    const kohya = write((p, part) => `${kohyaName(p)}.lora_${part}.weight`, alphas);
    same(sd.loadLora(kohya.file), kohya.lora, 6);
    // A file-wide alpha in the metadata (kohya's ss_network_alpha) when no module carries one.
    const meta = write((p, part) => `${kohyaName(p)}.lora_${part}.weight`, {}, { ss_network_alpha: "3" });
    same(sd.loadLora(meta.file), meta.lora, 3);
  });

  it("changes the UNet by alpha/rank: a peft file at alpha 8, rank 2 is the same adapter as alpha 2 with B × 4", async () => {
    const { file } = write((p, part) => `${p}.lora_${part === "down" ? "A" : "B"}.weight`);
    const latents = noise(4 * 8 * 8, 3);
    const context = await sd.encodeText(["a photo of a cat"]);
    const size = { height: 8, width: 8 };
    const at8 = await sd.predictNoise(latents, size, 500, context, { lora: sd.loadLora(file, { alpha: 8 }) });
    const scaledB = mapLora(sd.loadLora(file, { alpha: 2 }), (x, which) =>
      which === "up" ? x.map((v) => 4 * v) : x,
    );
    const at2 = await sd.predictNoise(latents, size, 500, context, { lora: scaledB });
    const plain = await sd.predictNoise(latents, size, 500, context);
    // The same function (measured: identical, ×4 is exact in float32); the adapter itself moves the
    // output by 1.5 of its norm.
    expect(relError(at8, at2)).toBeLessThan(1e-6);
    expect(relError(at8, plain)).toBeGreaterThan(1e-2);
  });

  it("a file adapting some projections leaves the others as they are, as peft does", async () => {
    // Cross-attention's to_k/to_v only (custom-diffusion-like), as a file names them.
    const kv = (p: string) => /\.attn2\.to_[kv]$/.test(p);
    const { lora } = write(peft);
    const partial = join(tempDir(), "kv.safetensors");
    writeSafetensors(partial, tensorsOf(lora, peft, kv));
    // The same adapter with every other module written out and its B zero: an adapter that adds nothing.
    const zeroed = join(tempDir(), "zeroed.safetensors");
    const zeroB = mapLora(lora, (x, which, p) => (which === "up" && !kv(p) ? new Float32Array(x.length) : x));
    writeSafetensors(zeroed, tensorsOf(zeroB, peft));
    const loaded = sd.loadLora(partial, { alpha: 4 });
    expect(loaded.size).toBe(lora.size);
    const latents = noise(4 * 8 * 8, 4);
    const context = await sd.encodeText(["a photo of a cat"]);
    const size = { height: 8, width: 8 };
    const got = await sd.predictNoise(latents, size, 500, context, { lora: loaded });
    const want = await sd.predictNoise(latents, size, 500, context, {
      lora: sd.loadLora(zeroed, { alpha: 4 }),
    });
    expect(relError(got, want)).toBeLessThan(1e-6);
    expect(relError(got, await sd.predictNoise(latents, size, 500, context))).toBeGreaterThan(1e-2);
  });

  it("takes lora_alpha, alpha_pattern and use_rslora from the LoraConfig diffusers saves in the metadata", () => {
    // save_lora_weights(…, unet_lora_adapter_metadata=config.to_dict()): JSON, keys under "unet.".
    const saved = (config: Record<string, unknown>) =>
      write(peft, {}, { format: "pt", lora_adapter_metadata: JSON.stringify(config) });
    const plain = saved({ "unet.lora_alpha": 8, "unet.r": 2, "unet.alpha_pattern": {} });
    same(sd.loadLora(plain.file), plain.lora, 8);
    // The option still wins, as the file's alpha does elsewhere.
    same(sd.loadLora(plain.file, { alpha: 3 }), plain.lora, 3);
    const pattern = saved({ "unet.lora_alpha": 8, "unet.r": 2, "unet.alpha_pattern": { "attn2.to_k": 4 } });
    // Two scales, so one adapter at scale 1 with each module's B times its own alpha/rank (oneScale).
    for (const [path, m] of sd.loadLora(pattern.file)) {
      const s = path.endsWith("attn2.to_k") ? 2 : 4;
      expect([m.alpha / m.rank, m.up], path).toEqual([1, pattern.lora.get(path)?.up.map((v) => v * s)]);
    }
    // rsLoRA: scale alpha/√rank.
    const rs = saved({ "unet.lora_alpha": 8, "unet.r": 2, "unet.use_rslora": true });
    for (const m of sd.loadLora(rs.file).values()) expect(m.alpha / m.rank).toBeCloseTo(8 / Math.SQRT2, 12);
    // A pattern key that is no regular expression is refused as the file's fault, by name.
    expect(() =>
      sd.loadLora(saved({ "unet.lora_alpha": 8, "unet.alpha_pattern": { "attn2.to_k(": 4 } }).file),
    ).toThrow(/its alpha_pattern key "attn2\.to_k\(" is not a pattern/);
    // DoRA rescales each output by a magnitude this engine does not apply.
    expect(() => sd.loadLora(saved({ "unet.lora_alpha": 8, "unet.use_dora": true }).file)).toThrow(
      /is a DoRA adapter \(use_dora\)/,
    );
  });

  it("reads diffusers 0.21–0.24's LoRACompatibleLinear names (unet.….to_q.lora.down.weight)", () => {
    for (const prefix of ["", "unet."]) {
      const { file, lora } = write((p, part) => `${prefix}${p}.lora.${part}.weight`);
      same(sd.loadLora(file, { alpha: 4 }), lora, 4);
    }
  });

  it("applies each module's own rank and alpha (kohya's per-module .alpha), as diffusers does", async () => {
    const { file, lora } = write(peft);
    // The same adapter at scale 1 (alpha 2, rank 2) written three ways, module by module: as it is; at
    // alpha 8 with B / 4; at rank 4 and alpha 8 with A twice and B / 2 on the first copy, 0 on the second
    // (powers of two: exact in float32).
    const tensors: Record<string, TestTensor> = {};
    [...lora].forEach(([path, m], i) => {
      const k = kohyaName(path);
      const way = i % 3;
      const rank = way === 2 ? 4 : 2;
      const down = way === 2 ? Float32Array.from([...m.down, ...m.down]) : m.down;
      const up = Float32Array.from({ length: m.outF * rank }, (_, j) => {
        const r = j % rank;
        const v = r < 2 ? (m.up[Math.floor(j / rank) * 2 + r] as number) : 0;
        return way === 0 ? v : way === 1 ? v / 4 : v / 2;
      });
      tensors[`${k}.lora_down.weight`] = f32([rank, m.inF], down);
      tensors[`${k}.lora_up.weight`] = f32([m.outF, rank], up);
      tensors[`${k}.alpha`] = f32([], Float32Array.of([2, 8, 8][way] as number));
    });
    const mixed = join(tempDir(), "mixed.safetensors");
    writeSafetensors(mixed, tensors);
    const latents = noise(4 * 8 * 8, 5);
    const context = await sd.encodeText(["a photo of a cat"]);
    const size = { height: 8, width: 8 };
    const got = await sd.predictNoise(latents, size, 500, context, { lora: sd.loadLora(mixed) });
    const want = await sd.predictNoise(latents, size, 500, context, {
      lora: sd.loadLora(file, { alpha: 2 }),
    });
    expect(relError(got, want)).toBeLessThan(1e-6);
  });

  it("refuses what it cannot apply, naming the file and the tensor", () => {
    const te = write(peft, {
      "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": f32([2, 2], new Float32Array(4)),
    });
    expect(() => sd.loadLora(te.file)).toThrow(LoraFileError);
    expect(() => sd.loadLora(te.file)).toThrow(/lora_te_text_model.*is a text-encoder adapter/);
    const ff = write(peft, {
      "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.lora_A.weight": f32(
        [2, 2],
        new Float32Array(4),
      ),
    });
    expect(() => sd.loadLora(ff.file)).toThrow(
      /ff\.net\.2, which is not one of this UNet's 128 attention projections/,
    );
    const path = [...sd.newLora(2, 2, 5).keys()][0] as string;
    const wrong = write((p, part) =>
      p === path && part === "up" ? `${p}.lora_B.weight.bak` : peft(p, part),
    );
    expect(() => sd.loadLora(wrong.file)).toThrow(/is not a LoRA tensor/);
    const missing = write((p, part) => (p === path && part === "up" ? `${path}.ignored` : peft(p, part)), {});
    expect(() => sd.loadLora(missing.file)).toThrow(LoraFileError);
    const transposed = join(tempDir(), "t.safetensors");
    const m = sd.newLora(2, 2, 5).get(path);
    if (!m) throw new Error("no module");
    writeSafetensors(transposed, {
      [`${path}.lora_A.weight`]: f32([m.inF, 2], m.down),
      [`${path}.lora_B.weight`]: f32([m.outF, 2], m.up),
    });
    expect(() => sd.loadLora(transposed)).toThrow(
      new RegExp(
        `${path.replaceAll(".", "\\.")}: down \\[${m.inF},2\\] .*\\(down must be \\[rank, ${m.inF}\\]`,
      ),
    );
    const alpha0 = write(peft);
    expect(() => sd.loadLora(alpha0.file, { alpha: 0 })).toThrow(/alpha 0; it must be positive/);
  });
});
