/**
 * diffusers' models/resnet.py: ResnetBlock2D, Downsample2D, Upsample2D, for the UNet and the VAE.
 */
import type { Tensor } from "../graph/index.js";
import { add, reshape, silu, upsampleNearest2d } from "../graph/index.js";
import { conv, groupNorm, linear } from "./layers.js";
import type { ParamSource } from "./params.js";

export interface ResnetOptions {
  outChannels: number;
  groups: number;
  eps: number;
  /** Width of the time embedding; the VAE's resnets have none. */
  tembChannels?: number;
}

/** norm1 → SiLU → conv1 (+ time_emb_proj(SiLU(temb))) → norm2 → SiLU → conv2, plus the (1×1-projected) input. */
export function resnetBlock2D(
  p: ParamSource,
  path: string,
  x: Tensor,
  temb: Tensor | undefined,
  o: ResnetOptions,
): Tensor {
  const inC = x.shape[1] as number;
  const outC = o.outChannels;
  let h = silu(groupNorm(p, `${path}.norm1`, x, inC, o.groups, o.eps));
  h = conv(p, `${path}.conv1`, h, inC, outC, { kernel: 3, padding: 1 });
  if (temb) {
    if (o.tembChannels === undefined) throw new Error(`${path}: a time embedding needs tembChannels`);
    const t = linear(p, `${path}.time_emb_proj`, silu(temb), o.tembChannels, outC);
    h = add(h, reshape(t, [t.shape[0] as number, outC, 1, 1]));
  }
  h = silu(groupNorm(p, `${path}.norm2`, h, outC, o.groups, o.eps));
  h = conv(p, `${path}.conv2`, h, outC, outC, { kernel: 3, padding: 1 });
  const shortcut = inC === outC ? x : conv(p, `${path}.conv_shortcut`, x, inC, outC, { kernel: 1 });
  return add(shortcut, h);
}

/**
 * Stride-2 3×3 conv. With padding 0 (the VAE encoder) diffusers pads one row and column at the bottom
 * and right only, which an asymmetric conv padding expresses exactly.
 */
export function downsample2D(p: ParamSource, path: string, x: Tensor, padding: number): Tensor {
  const c = x.shape[1] as number;
  const pads: [number, number, number, number] =
    padding === 0 ? [0, 0, 1, 1] : [padding, padding, padding, padding];
  return conv(p, `${path}.conv`, x, c, c, { kernel: 3, stride: 2, pads });
}

/** Nearest up-sampling to (outH, outW) — twice the size, or the skip connection's size when odd — then a 3×3 conv. */
export function upsample2D(p: ParamSource, path: string, x: Tensor, outH: number, outW: number): Tensor {
  const c = x.shape[1] as number;
  return conv(p, `${path}.conv`, upsampleNearest2d(x, outH, outW), c, c, { kernel: 3, padding: 1 });
}
