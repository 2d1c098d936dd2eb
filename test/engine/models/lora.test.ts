/**
 * LoRA on the fixture UNet (sd1): the peft init leaves the UNet unchanged, a non-zero adapter changes it,
 * and the loss graph's LoRA gradients match central finite differences.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { isLoraTarget, type LoraWeights, newLoraWeights } from "../../../src/engine/models/lora.js";
import { relError } from "../../helpers/golden.js";

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
  const x0 = noise(4 * ls * ls, 2);
  const eps = noise(4 * ls * ls, 3);

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
    const plain = await sd.predictNoise(latents, 500, context);
    const lora = sd.newLora(4, 4, 1);
    const withZero = await sd.predictNoise(latents, 500, context, lora);
    expect(relError(withZero, plain)).toBeLessThan(1e-6);
    const bumped = mapLora(lora, (x, which) => (which === "up" ? noise(x.length, 9).map((v) => 0.1 * v) : x));
    const changed = await sd.predictNoise(latents, 500, context, bumped);
    expect(relError(changed, plain)).toBeGreaterThan(1e-3);
  });

  it("d loss / d LoRA matches central finite differences along a random direction", async () => {
    const context = await sd.encodeText(["a photo of a cat"]);
    // Non-zero B so that gradients flow into A too.
    const lora = mapLora(sd.newLora(2, 2, 3), (x, which, path) =>
      which === "up" ? noise(x.length, path.length).map((v) => 0.05 * v) : x,
    );
    const args = { latents0: x0, noise: eps, t: [500], context, wrt: ["lora"] as const };
    const { dLora } = await sd.lossAndGrads({ ...args, lora });
    if (!dLora) throw new Error("no LoRA gradients returned");
    // Direction u over every A and B entry; directional derivative ⟨∇L, u⟩ vs (L(θ+hu) − L(θ−hu)) / 2h.
    let seed = 100;
    const dir = mapLora(lora, (x) => noise(x.length, seed++));
    let analytic = 0;
    for (const [path, g] of dLora) {
      const u = dir.get(path);
      if (!u) throw new Error(`no direction for ${path}`);
      g.down.forEach((v, i) => {
        analytic += v * (u.down[i] as number);
      });
      g.up.forEach((v, i) => {
        analytic += v * (u.up[i] as number);
      });
    }
    const h = 1e-2;
    const shifted = (sign: number) =>
      mapLora(lora, (x, which, path) => {
        const u = dir.get(path);
        const d = (which === "down" ? u?.down : u?.up) as Float32Array;
        return x.map((v, i) => v + sign * h * (d[i] as number));
      });
    const plus = await sd.lossAndGrads({ ...args, lora: shifted(1) });
    const minus = await sd.lossAndGrads({ ...args, lora: shifted(-1) });
    const numeric = (plus.loss - minus.loss) / (2 * h);
    // float32 loss, h = 1e-2: truncation O(h²) and rounding ~1e-7·L/h stay well under 2 %.
    expect(Math.abs(numeric)).toBeGreaterThan(1e-4);
    expect(Math.abs(analytic - numeric) / Math.abs(numeric)).toBeLessThan(2e-2);
  });
});
