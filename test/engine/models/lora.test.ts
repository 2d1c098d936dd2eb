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
