/**
 * torch.nn layers over a ParamSource: each takes the module's full checkpoint path (e.g.
 * "down_blocks.0.resnets.0.conv1") and reads `<path>.weight` / `<path>.bias` with the shape the caller's
 * config implies. Norms compute in float32 whatever
 * the compute dtype: the graph's norm ops do that (the fp16 policy).
 */
import type { Tensor } from "../graph/index.js";
import { conv2d, groupNorm as gn, linear as lin, layerNorm as ln } from "../graph/index.js";
import type { ParamSource } from "./params.js";

export function linear(
  p: ParamSource,
  path: string,
  x: Tensor,
  inF: number,
  outF: number,
  bias = true,
): Tensor {
  const w = p.get(`${path}.weight`, [outF, inF]);
  return bias ? lin(x, w, p.get(`${path}.bias`, [outF])) : lin(x, w);
}

export interface ConvOptions {
  kernel: number;
  stride?: number;
  /** Same padding on every side… */
  padding?: number;
  /** …or [top, left, bottom, right]. */
  pads?: readonly [number, number, number, number];
}

export function conv(
  p: ParamSource,
  path: string,
  x: Tensor,
  inC: number,
  outC: number,
  o: ConvOptions,
): Tensor {
  const w = p.get(`${path}.weight`, [outC, inC, o.kernel, o.kernel]);
  const b = p.get(`${path}.bias`, [outC]);
  const pd = o.padding ?? 0;
  return conv2d(x, w, b, { stride: o.stride ?? 1, padding: o.pads ?? [pd, pd, pd, pd] });
}

export function groupNorm(
  p: ParamSource,
  path: string,
  x: Tensor,
  channels: number,
  groups: number,
  eps: number,
): Tensor {
  if (channels % groups !== 0) {
    throw new Error(`${path}: ${channels} channels cannot be split into ${groups} groups`);
  }
  return gn(x, groups, p.get(`${path}.weight`, [channels]), p.get(`${path}.bias`, [channels]), eps);
}

export function layerNorm(p: ParamSource, path: string, x: Tensor, dim: number, eps: number): Tensor {
  return ln(x, p.get(`${path}.weight`, [dim]), p.get(`${path}.bias`, [dim]), eps);
}
