/**
 * AutoencoderKL through the engine API beyond the golden image: batched decoding equals decoding one
 * by one, non-square sizes work, and sizes the VAE cannot take are refused by name.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { relError } from "../../helpers/golden.js";

describe("AutoencoderKL", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load("test/fixtures/models/sd1/model", { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("encodes and decodes a non-square image; a batch decodes as its items do", async () => {
    const [h, w] = [64, 48];
    const image = Float32Array.from({ length: 3 * h * w }, (_, i) => Math.sin(i / 7));
    const { mean, std } = await sd.encodeImage(image, h, w);
    expect(mean.length).toBe(4 * (h / 8) * (w / 8));
    expect(std.every((s) => s > 0)).toBe(true);
    const other = mean.map((v) => -v);
    const both = new Float32Array(mean.length * 2);
    both.set(mean);
    both.set(other, mean.length);
    const batched = await sd.decodeLatents(both, h, w);
    const n = 3 * h * w;
    expect(relError(batched.subarray(0, n), await sd.decodeLatents(mean, h, w))).toBeLessThan(1e-5);
    expect(relError(batched.subarray(n), await sd.decodeLatents(other, h, w))).toBeLessThan(1e-5);
  });

  it("refuses sizes that are not multiples of the VAE's factor, and mismatched buffers", async () => {
    await expect(sd.encodeImage(new Float32Array(3 * 60 * 64), 60, 64)).rejects.toThrow(
      /image size 60 is not a multiple of the VAE's factor 8/,
    );
    await expect(sd.encodeImage(new Float32Array(10), 64, 64)).rejects.toThrow(
      /image holds 10 values, expected 12288/,
    );
    await expect(sd.decodeLatents(new Float32Array(100), 64, 64)).rejects.toThrow(/not a multiple of 256/);
  });
});
