/**
 * AutoencoderKL through the engine API beyond the golden image: batched decoding equals decoding one
 * by one, non-square sizes work, sizes the VAE cannot take are refused by name, and checkpoints with
 * the pre-0.14 attention names (query/key/value/proj_attn) load as diffusers loads them.
 */

const MODEL = "test/fixtures/models/sd1/model";

/** A copy of the fixture whose VAE names its mid-block attention projections the old way. */
function legacyCopy(): string {
  const dir = join(mkdtempSync(join(tmpdir(), "legacy-vae-")), "model");
  cpSync(MODEL, dir, { recursive: true });
  const file = join(dir, "vae", "diffusion_pytorch_model.safetensors");
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const old: Record<string, string> = { to_q: "query", to_k: "key", to_v: "value", "to_out.0": "proj_attn" };
  const renamed = Object.fromEntries(
    Object.entries(header).map(([k, v]) => [
      k.replace(
        /(mid_block\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\./,
        (_, p: string, m: string) => `${p}.${old[m]}.`,
      ),
      v,
    ]),
  );
  expect(Object.keys(renamed).filter((k) => k.includes(".query.")).length).toBe(4);
  const json = Buffer.from(JSON.stringify(renamed), "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  // Tensor offsets are relative to the data section, so the data bytes follow the new header unchanged.
  writeFileSync(file, Buffer.concat([len, json, bytes.subarray(8 + n)]));
  return dir;
}

import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { relError } from "../../helpers/golden.js";

describe("AutoencoderKL", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("encodes and decodes a non-square image; a batch decodes as its items do", async () => {
    const [h, w] = [64, 48];
    const image = Float32Array.from({ length: 3 * h * w }, (_, i) => Math.sin(i / 7));
    const { mean, std, size } = await sd.encodeImage(image, h, w);
    expect(size).toEqual({ height: h / 8, width: w / 8 });
    expect(mean.length).toBe(4 * (h / 8) * (w / 8));
    expect(std.every((s) => s > 0)).toBe(true);
    const other = mean.map((v) => -v);
    const both = new Float32Array(mean.length * 2);
    both.set(mean);
    both.set(other, mean.length);
    const batched = await sd.decodeLatents(both, size);
    const n = 3 * h * w;
    expect(relError(batched.subarray(0, n), await sd.decodeLatents(mean, size))).toBeLessThan(1e-5);
    expect(relError(batched.subarray(n), await sd.decodeLatents(other, size))).toBeLessThan(1e-5);
  });

  it("refuses sizes that are not multiples of the VAE's factor, and mismatched buffers", async () => {
    await expect(sd.encodeImage(new Float32Array(3 * 60 * 64), 60, 64)).rejects.toThrow(
      /image height 60 is not a positive multiple of the VAE's factor 8/,
    );
    await expect(sd.encodeImage(new Float32Array(10), 64, 64)).rejects.toThrow(
      /image holds 10 values, expected 12288/,
    );
    await expect(sd.decodeLatents(new Float32Array(100), { height: 8, width: 8 })).rejects.toThrow(
      /not a multiple of 256/,
    );
  });

  it("loads a VAE with the pre-0.14 attention names to the same function", async () => {
    const legacy = await StableDiffusion.load(legacyCopy(), { device: "cpu", dtype: "fp32" });
    try {
      const image = Float32Array.from({ length: 3 * 64 * 64 }, (_, i) => Math.cos(i / 5));
      const a = await sd.encodeImage(image, 64, 64);
      const b = await legacy.encodeImage(image, 64, 64);
      expect(b.mean).toEqual(a.mean);
      expect(await legacy.decodeLatents(a.mean, a.size)).toEqual(await sd.decodeLatents(a.mean, a.size));
    } finally {
      await legacy.release();
    }
  });
});
