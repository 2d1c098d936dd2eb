/**
 * UNet2DConditionModel (diffusers models/unets/unet_2d_condition.py + unet_2d_blocks.py) for SD 1.x and
 * 2.x: CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D.
 */
import type { Tensor } from "../graph/index.js";
import { cast, concat, silu } from "../graph/index.js";
import { type AttentionHook, transformer2D } from "./attention.js";
import { perLevel, type UNetConfig } from "./config.js";
import { timeMlp, timestepEmbedding } from "./embeddings.js";
import { conv, groupNorm } from "./layers.js";
import type { LoraHook } from "./lora.js";
import type { ParamSource } from "./params.js";
import { downsample2D, resnetBlock2D, upsample2D } from "./resnet.js";

export interface UNetInputs {
  /** [B, in_channels, h, w] latents. */
  sample: Tensor;
  /** [B] float32 timesteps. */
  timestep: Tensor;
  /** [B, 77, cross_attention_dim] text context. */
  context: Tensor;
}

export const CROSS_DOWN = "CrossAttnDownBlock2D";
export const CROSS_UP = "CrossAttnUpBlock2D";

/** diffusers itself refuses num_attention_heads for this model: attention_head_dim carries the head count. */
function checkConfig(c: UNetConfig): void {
  if (c.num_attention_heads != null) {
    throw new Error(
      "unet config: num_attention_heads is set; SD checkpoints give the head count as attention_head_dim",
    );
  }
}

/**
 * The UNet's output ([B, out_channels, h, w]: ε or v, whatever the checkpoint predicts). `lora` rides on
 * the attention projections; `control` decides how every attention module attends (attention control).
 */
export function unet(
  p: ParamSource,
  c: UNetConfig,
  x: UNetInputs,
  lora?: LoraHook,
  control?: AttentionHook,
): Tensor {
  checkConfig(c);
  const levels = c.block_out_channels.length;
  const boc = c.block_out_channels;
  const heads = perLevel(c.attention_head_dim, levels);
  const tLayers = perLevel(c.transformer_layers_per_block, levels);
  const groups = c.norm_num_groups;
  const eps = c.norm_eps;
  const c0 = boc[0] as number;
  const tembC = c0 * 4;
  const dt = p.dtype;

  const tproj = timestepEmbedding(x.timestep, c0, c.flip_sin_to_cos, c.freq_shift);
  const temb = timeMlp(p, "time_embedding", cast(tproj, dt), c0, tembC);
  const context = cast(x.context, dt);
  const sample = cast(x.sample, dt);

  const resnet = (path: string, h: Tensor, outC: number) =>
    resnetBlock2D(p, path, h, temb, { outChannels: outC, groups, eps, tembChannels: tembC });
  const attn = (path: string, h: Tensor, level: number, nHeads: number) =>
    transformer2D(p, path, h, context, {
      heads: nHeads,
      // diffusers: channels // heads (a remainder narrows the attention; proj_in/out map back).
      dimHead: Math.floor((h.shape[1] as number) / nHeads),
      contextDim: c.cross_attention_dim,
      upcast: c.upcast_attention,
      groups,
      layers: tLayers[level] as number,
      linearProjection: c.use_linear_projection,
      lora,
      control,
    });

  let h = conv(p, "conv_in", sample, c.in_channels, c0, { kernel: 3, padding: 1 });
  const skips: Tensor[] = [h];
  for (let i = 0; i < levels; i++) {
    const outC = boc[i] as number;
    const cross = c.down_block_types[i] === CROSS_DOWN;
    for (let j = 0; j < c.layers_per_block; j++) {
      h = resnet(`down_blocks.${i}.resnets.${j}`, h, outC);
      if (cross) h = attn(`down_blocks.${i}.attentions.${j}`, h, i, heads[i] as number);
      skips.push(h);
    }
    if (i < levels - 1) {
      h = downsample2D(p, `down_blocks.${i}.downsamplers.0`, h, c.downsample_padding);
      skips.push(h);
    }
  }

  const cl = boc[levels - 1] as number;
  h = resnet("mid_block.resnets.0", h, cl);
  h = attn("mid_block.attentions.0", h, levels - 1, heads[levels - 1] as number);
  h = resnet("mid_block.resnets.1", h, cl);

  for (let i = 0; i < levels; i++) {
    const level = levels - 1 - i;
    const outC = boc[level] as number;
    const cross = c.up_block_types[i] === CROSS_UP;
    for (let j = 0; j <= c.layers_per_block; j++) {
      const skip = skips.pop();
      if (!skip) throw new Error("unet: ran out of skip connections (block counts disagree)");
      h = resnet(`up_blocks.${i}.resnets.${j}`, concat([h, skip], 1), outC);
      if (cross) h = attn(`up_blocks.${i}.attentions.${j}`, h, level, heads[level] as number);
    }
    if (i < levels - 1) {
      // Up-sample to the size of the skip connection it meets next: 2× when sizes are even, and the
      // down-sampled size rounded up when they are odd (diffusers' forward_upsample_size).
      const next = skips[skips.length - 1] as Tensor;
      h = upsample2D(p, `up_blocks.${i}.upsamplers.0`, h, next.shape[2] as number, next.shape[3] as number);
    }
  }

  h = silu(groupNorm(p, "conv_norm_out", h, c0, groups, eps));
  const out = conv(p, "conv_out", h, c0, c.out_channels, { kernel: 3, padding: 1 });
  return cast(out, "float32");
}
