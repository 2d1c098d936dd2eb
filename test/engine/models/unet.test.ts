/**
 * UNet behaviour the golden tensors do not cover: latent sizes that are not multiples of 8 (up-sampling
 * to the skip connection's size), and configs that disagree with the weights.
 */

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { goldenUnetArgs } from "../../../src/cli/bench/golden.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { unetGraph } from "../../../src/engine/models/components.js";
import { loadGolden, relError } from "../../helpers/golden.js";

const MODEL = "test/fixtures/models/sd1/model";

describe("UNet2DConditionModel", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("runs odd latent sizes (9×7 → 5×4 → 3×2 → 2×1 and back up to each skip's size)", async () => {
    const [h, w] = [9, 7];
    const latents = Float32Array.from({ length: 4 * h * w }, (_, i) => Math.sin(i));
    const context = await sd.encodeText(["a photo of a cat"]);
    const out = await sd.predictNoise(latents, { height: h, width: w }, 500, context);
    expect(out.length).toBe(4 * h * w);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  it("takes the latents' shape from its size, never from the value count: 6×10 and 10×6 are different calls", async () => {
    const latents = Float32Array.from({ length: 4 * 60 }, (_, i) => Math.sin(i));
    const context = await sd.encodeText(["a photo of a cat"]);
    const wide = await sd.predictNoise(latents, { height: 6, width: 10 }, 500, context);
    const tall = await sd.predictNoise(latents, { height: 10, width: 6 }, 500, context);
    expect(wide.length).toBe(4 * 60);
    expect(tall.length).toBe(4 * 60);
    expect(relError(tall, wide)).toBeGreaterThan(1e-2);
    await expect(sd.predictNoise(latents, { height: 8, width: 8 }, 500, context)).rejects.toThrow(
      /predictNoise: latents \(1×4×8×8\) holds 240 values, expected 256/,
    );
    await expect(sd.predictNoise(latents, { height: 0, width: 60 }, 500, context)).rejects.toThrow(
      /latent size 0×60 is not two positive whole numbers/,
    );
  });

  it("computes in fp16 when asked (norms and softmax in fp32) within its measured distance of fp32", async () => {
    // Measured on sd1's golden call: 1.1e-3 from torch's float32 on the CPU provider (which computes
    // float16 ops in float32 and stores float16 between some of them), 1.6e-3 with float16 storage
    // emulated as a native-fp16 GPU keeps it (test/helpers/half-emulation.ts; 40 s, so measured once,
    // not run here). Bound: 1.5× the larger. (sd2's 8×8 call is ill-conditioned: 2.1e-2 and 8e-3;
    // docs/ENGINE.md, Parity.)
    const g = loadGolden("test/fixtures/models/sd1");
    const half = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp16" });
    try {
      const out = await half.predictNoise(...goldenUnetArgs(g));
      expect(relError(out, g.f32("unet.out"))).toBeLessThan(2.5e-3);
    } finally {
      await half.release();
    }
  });

  it("refuses weights whose shapes disagree with the config, naming the tensor and the file", () => {
    const ckpt = openCheckpoint(MODEL);
    const config = { ...ckpt.unet.config, cross_attention_dim: 32 };
    expect(() => unetGraph(ckpt.unet.weights, config, { batch: 1, height: 8, width: 8 })).toThrow(
      /diffusion_pytorch_model\.safetensors.*attn2\.to_k\.weight.*\[32, 16\].*\[32, 32\]/,
    );
  });

  it("refuses num_attention_heads, which diffusers does not implement for this model either", () => {
    const ckpt = openCheckpoint(MODEL);
    const config = { ...ckpt.unet.config, num_attention_heads: 8 };
    expect(() => unetGraph(ckpt.unet.weights, config, { batch: 1, height: 8, width: 8 })).toThrow(
      /num_attention_heads/,
    );
  });
});
