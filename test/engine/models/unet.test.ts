/**
 * UNet behaviour the golden tensors do not cover: latent sizes that are not multiples of 8 (up-sampling
 * to the skip connection's size), and configs that disagree with the weights.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
    const out = await sd.predictNoise(latents, 500, context, undefined, { height: h, width: w });
    expect(out.length).toBe(4 * h * w);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  it("computes in fp16 when asked (norms and softmax in fp32) close to the fp32 result", async () => {
    const g = loadGolden("test/fixtures/models/sd1");
    const half = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp16" });
    try {
      const out = await half.predictNoise(
        g.f32("unet.sample"),
        g.ints("unet.timestep"),
        g.f32("unet.encoder_hidden_states"),
      );
      // fp16 keeps ~3 decimal digits; the fixture's UNet in fp16 lands at ~7e-4 of the fp32 reference.
      expect(relError(out, g.f32("unet.out"))).toBeLessThan(5e-3);
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
