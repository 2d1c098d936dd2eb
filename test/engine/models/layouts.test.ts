/**
 * Checkpoint layouts no fixture has, built as random-weight checkpoints (src/cli/bench/random-checkpoint.ts):
 * 3- and 5-level UNets and VAEs, a [height, width] sample_size, per-level head counts, and odd widths
 * (an odd timestep-embedding width, heads that do not divide the channels). Each loads, runs the UNet on
 * non-square latents and a gradient step, and takes the parameter shapes diffusers gives it; what
 * diffusers refuses is refused with the setting named.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { randomCheckpoint } from "../../../src/cli/bench/random-checkpoint.js";
import { tinyShapes } from "../../../src/cli/bench/sd.js";
import { Graph } from "../../../src/engine/graph/index.js";
import { type LatentSize, StableDiffusion } from "../../../src/engine/index.js";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { parseConfig, UNetConfigSchema, VaeConfigSchema } from "../../../src/engine/models/config.js";
import { timestepEmbedding } from "../../../src/engine/models/embeddings.js";
import { createSession } from "../../../src/engine/runtime/index.js";
import { modelFileErrorOf } from "../../helpers/model-files.js";

const tmp = mkdtempSync(join(tmpdir(), "layouts-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const base = tinyShapes();
const CROSS = ["CrossAttnDownBlock2D", "DownBlock2D"] as const;

/** A random-weight checkpoint with the tiny bench shapes' text encoder and these UNet / VAE settings. */
function checkpoint(name: string, unet: Record<string, unknown>, vae: Record<string, unknown>): string {
  return randomCheckpoint(
    join(tmp, name),
    {
      unet: UNetConfigSchema.parse({ cross_attention_dim: base.clip.hidden_size, ...unet }),
      vae: VaeConfigSchema.parse(vae),
      clip: base.clip,
    },
    "float32",
  );
}

const LAYOUTS = {
  "3 levels, sample_size [6, 10], 3-level VAE": {
    unet: {
      block_out_channels: [32, 64, 64],
      down_block_types: [CROSS[0], CROSS[0], CROSS[1]],
      up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      attention_head_dim: [2, 4, 4],
      layers_per_block: 1,
      sample_size: [6, 10],
    },
    vae: {
      block_out_channels: [32, 32, 64],
      down_block_types: Array(3).fill("DownEncoderBlock2D"),
      up_block_types: Array(3).fill("UpDecoderBlock2D"),
    },
    native: { height: 24, width: 40 },
    multiple: 4 * 4,
  },
  "5 levels, heads per level": {
    unet: {
      block_out_channels: [32, 32, 64, 64, 96],
      down_block_types: [CROSS[0], CROSS[0], CROSS[0], CROSS[0], CROSS[1]],
      up_block_types: ["UpBlock2D", ...Array(4).fill("CrossAttnUpBlock2D")],
      attention_head_dim: [1, 2, 4, 4, 8],
      transformer_layers_per_block: [1, 1, 2, 1, 1],
      layers_per_block: 1,
      sample_size: 8,
    },
    vae: {
      block_out_channels: [32, 32, 64, 64],
      down_block_types: Array(4).fill("DownEncoderBlock2D"),
      up_block_types: Array(4).fill("UpDecoderBlock2D"),
    },
    native: { height: 64, width: 64 },
    multiple: 8 * 16,
  },
  "odd widths: 33/66 channels in 3 groups, 2 and 4 heads that do not divide them": {
    unet: {
      block_out_channels: [33, 66],
      down_block_types: [CROSS[0], CROSS[1]],
      up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D"],
      attention_head_dim: [2, 4],
      norm_num_groups: 3,
      layers_per_block: 1,
      use_linear_projection: true,
    },
    vae: {
      block_out_channels: [33, 33],
      norm_num_groups: 3,
      down_block_types: Array(2).fill("DownEncoderBlock2D"),
      up_block_types: Array(2).fill("UpDecoderBlock2D"),
    },
    native: { height: 512, width: 512 },
    multiple: 2 * 2,
  },
} as const;

describe.each(Object.entries(LAYOUTS))("a checkpoint with %s", (name, layout) => {
  it("loads, reports its native size and size multiple, runs the UNet on 6×10 and 10×6 latents, a gradient step on 6×10", async () => {
    const dir = checkpoint(name.replace(/\W+/g, "-"), layout.unet, layout.vae);
    const sd = await StableDiffusion.load(dir, { device: "cpu", dtype: "fp32" });
    try {
      expect(sd.imageShape).toEqual({ native: layout.native, multiple: layout.multiple });
      const context = await sd.encodeText(["a photo of a cat"]);
      const sizes: LatentSize[] = [
        { height: 6, width: 10 },
        { height: 10, width: 6 },
      ];
      for (const size of sizes) {
        const n = 4 * size.height * size.width;
        const latents = Float32Array.from({ length: n }, (_, i) => Math.sin(i / 3));
        const out = await sd.predictNoise(latents, size, 500, context);
        expect(out).toHaveLength(n);
        expect(out.every(Number.isFinite)).toBe(true);
        if (size !== sizes[0]) continue;
        const r = await sd.lossAndGrads({
          latents0: latents,
          size,
          noise: latents.map((v) => -v),
          t: [300],
          context,
          wrt: ["context"],
        });
        expect(Number.isFinite(r.loss)).toBe(true);
        expect(r.dContext?.some((v) => v !== 0)).toBe(true);
      }
      const m = sd.trainingMemory({ names: sd.unetWeightNames("attention"), batch: 1, height: 6, width: 10 });
      expect(m.activations).toBeGreaterThan(0);
      const image = await sd.decodeLatents(new Float32Array(4 * 6 * 10), { height: 6, width: 10 });
      expect(image).toHaveLength(3 * 6 * 10 * sd.vaeScale ** 2);
    } finally {
      await sd.release();
    }
  }, 60_000);
});

describe("odd widths follow diffusers' shapes", () => {
  it("narrows attention to heads × (channels // heads) and pads an odd timestep embedding", async () => {
    const layout = LAYOUTS["odd widths: 33/66 channels in 3 groups, 2 and 4 heads that do not divide them"];
    const ckpt = openCheckpoint(checkpoint("odd-shapes", layout.unet, layout.vae));
    const shape = (n: string) => ckpt.unet.weights.info(n).shape;
    // diffusers: Transformer2DModel(heads, out_channels // heads, in_channels=out_channels): inner 2·16 = 32.
    expect(shape("down_blocks.0.attentions.0.proj_in.weight")).toEqual([32, 33]);
    expect(shape("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")).toEqual([32, 32]);
    expect(shape("down_blocks.0.attentions.0.proj_out.weight")).toEqual([33, 32]);
    expect(shape("mid_block.attentions.0.proj_in.weight")).toEqual([64, 66]);
    // Timesteps(33) feeds TimestepEmbedding(33, 4·33).
    expect(shape("time_embedding.linear_1.weight")).toEqual([132, 33]);

    const g = new Graph("t");
    const t = g.input("t", "float32", [2]);
    g.output("emb", timestepEmbedding(t, 5, true, 0));
    const session = await createSession(g, { device: "cpu" });
    try {
      const out = await session.run({ t: { dtype: "float32", shape: [2], data: Float32Array.of(0, 10) } });
      const emb = Array.from(out.emb?.data as Float32Array);
      // half = 2 frequencies: exp(−ln(10⁴)·i / 2) = 1, 0.01; [cos, sin] then a zero column.
      const row = (x: number) => [Math.cos(x), Math.cos(x / 100), Math.sin(x), Math.sin(x / 100), 0];
      [...row(0), ...row(10)].forEach((v, i) => {
        expect(emb[i]).toBeCloseTo(v, 6);
      });
    } finally {
      await session.release();
    }
  });
});

describe("layouts diffusers refuses are refused, naming the setting", () => {
  const unet = (o: Record<string, unknown>) =>
    modelFileErrorOf(() => parseConfig(UNetConfigSchema, o, "unet/config.json")).message;
  const vae = (o: Record<string, unknown>) =>
    modelFileErrorOf(() => parseConfig(VaeConfigSchema, o, "vae/config.json")).message;

  it("more heads than channels, a channel count GroupNorm cannot split, a one-entry sample_size", () => {
    expect(unet({ block_out_channels: [32, 32, 64, 64], attention_head_dim: [2, 64, 4, 4] })).toMatch(
      /"attention_head_dim" = \[2,64,4,4\] is not supported \(level 1 has 64 heads for 32 channels/,
    );
    expect(unet({ block_out_channels: [320, 640, 1280, 1000] })).toMatch(
      /"block_out_channels" = .* \(each must be a multiple of norm_num_groups \(32\); 1000 is not\)/,
    );
    expect(vae({ block_out_channels: [33], norm_num_groups: 32 })).toMatch(
      /vae\/config\.json: setting "block_out_channels" = \[33\] is not supported \(each must be a multiple of norm_num_groups/,
    );
    expect(unet({ sample_size: [64] })).toMatch(/setting "sample_size" = \[64\] is not supported/);
    expect(unet({ down_block_types: ["CrossAttnDownBlock2D", "DownBlock2D"] })).toMatch(
      /"down_block_types" = .* \(needs one entry per level of block_out_channels \(4\)\)/,
    );
  });
});
