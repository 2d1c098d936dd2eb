/**
 * AutoencoderKL (diffusers models/autoencoders/autoencoder_kl.py + vae.py): the Encoder with quant_conv
 * and the diagonal Gaussian it parameterizes, and post_quant_conv with the Decoder.
 */
import type { Tensor } from "../graph/index.js";
import { add, cast, exp, greater, less, mul, silu, split, where } from "../graph/index.js";
import { attentionBlock, fromTokens, toTokens } from "./attention.js";
import type { VaeConfig } from "./config.js";
import { conv, groupNorm } from "./layers.js";
import type { ParamSource } from "./params.js";
import { downsample2D, resnetBlock2D, upsample2D } from "./resnet.js";

const LEGACY_ATTENTION: Record<string, string> = {
  to_q: "query",
  to_k: "key",
  to_v: "value",
  "to_out.0": "proj_attn",
};

/**
 * VAE checkpoints saved before diffusers 0.14 name the mid-block attention's projections query, key,
 * value and proj_attn (diffusers still loads them, and some hub copies of SD 1.x ship them).
 */
export function vaeLegacyName(name: string): string | undefined {
  const m = /^(.*\.mid_block\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.exec(name);
  return m ? `${m[1]}.${LEGACY_ATTENTION[m[2] as string]}.${m[3]}` : undefined;
}

/** The VAE's norms all use eps 1e-6. */
const EPS = 1e-6;

/** UNetMidBlock2D: resnet, single-head self-attention over pixels (residual), resnet. */
function midBlock(p: ParamSource, path: string, x: Tensor, c: VaeConfig): Tensor {
  const ch = x.shape[1] as number;
  const groups = c.norm_num_groups;
  const resnet = (name: string, h: Tensor) =>
    resnetBlock2D(p, name, h, undefined, { outChannels: ch, groups, eps: EPS });
  let h = resnet(`${path}.resnets.0`, x);
  if (c.mid_block_add_attention) {
    const [, , hh, ww] = h.shape as [number, number, number, number];
    const normed = toTokens(groupNorm(p, `${path}.attentions.0.group_norm`, h, ch, groups, EPS));
    const a = attentionBlock(p, `${path}.attentions.0`, normed, undefined, {
      heads: 1,
      dimHead: ch,
      queryDim: ch,
      contextDim: ch,
      qkvBias: true,
      upcast: true,
    });
    h = add(fromTokens(a, hh, ww), h);
  }
  return resnet(`${path}.resnets.1`, h);
}

function clamp(x: Tensor, lo: number, hi: number): Tensor {
  return where(less(x, lo), lo, where(greater(x, hi), hi, x));
}

/** image [B, 3, H, W] in [-1, 1] → the latent distribution's mean and std ([B, latent, H/8, W/8], unscaled). */
export function vaeEncode(p: ParamSource, c: VaeConfig, image: Tensor): { mean: Tensor; std: Tensor } {
  const boc = c.block_out_channels;
  const levels = boc.length;
  const groups = c.norm_num_groups;
  const x = cast(image, p.dtype);
  let h = conv(p, "encoder.conv_in", x, c.in_channels, boc[0] as number, { kernel: 3, padding: 1 });
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < c.layers_per_block; j++) {
      h = resnetBlock2D(p, `encoder.down_blocks.${i}.resnets.${j}`, h, undefined, {
        outChannels: boc[i] as number,
        groups,
        eps: EPS,
      });
    }
    if (i < levels - 1) h = downsample2D(p, `encoder.down_blocks.${i}.downsamplers.0`, h, 0);
  }
  h = midBlock(p, "encoder.mid_block", h, c);
  const cl = boc[levels - 1] as number;
  h = silu(groupNorm(p, "encoder.conv_norm_out", h, cl, groups, EPS));
  const moments = 2 * c.latent_channels;
  h = conv(p, "encoder.conv_out", h, cl, moments, { kernel: 3, padding: 1 });
  if (c.use_quant_conv) h = conv(p, "quant_conv", h, moments, moments, { kernel: 1 });
  h = cast(h, "float32");
  const [mean, logvar] = split(h, [c.latent_channels, c.latent_channels], 1) as [Tensor, Tensor];
  // DiagonalGaussianDistribution clamps the log-variance to [-30, 20] before std = exp(logvar / 2).
  return { mean, std: exp(mul(clamp(logvar, -30, 20), 0.5)) };
}

/** latents [B, latent, h, w] (unscaled: divide by scaling_factor first) → image [B, 3, 8h, 8w]. */
export function vaeDecode(p: ParamSource, c: VaeConfig, latents: Tensor): Tensor {
  const boc = c.block_out_channels;
  const levels = boc.length;
  const groups = c.norm_num_groups;
  const lc = c.latent_channels;
  let h = cast(latents, p.dtype);
  if (c.use_post_quant_conv) h = conv(p, "post_quant_conv", h, lc, lc, { kernel: 1 });
  h = conv(p, "decoder.conv_in", h, lc, boc[levels - 1] as number, { kernel: 3, padding: 1 });
  h = midBlock(p, "decoder.mid_block", h, c);
  for (let i = 0; i < levels; i++) {
    const outC = boc[levels - 1 - i] as number;
    for (let j = 0; j <= c.layers_per_block; j++) {
      h = resnetBlock2D(p, `decoder.up_blocks.${i}.resnets.${j}`, h, undefined, {
        outChannels: outC,
        groups,
        eps: EPS,
      });
    }
    if (i < levels - 1) {
      const [, , hh, ww] = h.shape as [number, number, number, number];
      h = upsample2D(p, `decoder.up_blocks.${i}.upsamplers.0`, h, 2 * hh, 2 * ww);
    }
  }
  const c0 = boc[0] as number;
  h = silu(groupNorm(p, "decoder.conv_norm_out", h, c0, groups, EPS));
  h = conv(p, "decoder.conv_out", h, c0, c.out_channels, { kernel: 3, padding: 1 });
  return cast(h, "float32");
}
