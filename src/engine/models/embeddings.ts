/**
 * diffusers' models/embeddings.py: the sinusoidal timestep embedding (Timesteps / get_timestep_embedding)
 * and TimestepEmbedding (linear_1 → SiLU → linear_2).
 */
import type { Tensor } from "../graph/index.js";
import { concat, cos, mul, silu, sin, unsqueeze } from "../graph/index.js";
import { linear } from "./layers.js";
import type { ParamSource } from "./params.js";

/**
 * The frequencies exp(−ln(10000)·i / (half − freqShift)), rounded to float32 at each step as torch
 * computes them in float32, so that sin(t·f) at t≈1000 agrees to the last bit that matters.
 */
function timestepFrequencies(dim: number, freqShift: number, maxPeriod = 10000): Float32Array {
  const half = Math.floor(dim / 2);
  const f = Math.fround;
  const negLog = f(-Math.log(maxPeriod));
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = f(Math.exp(f(f(negLog * i) / (half - freqShift))));
  return out;
}

/**
 * timesteps [B] (float32) → [B, dim]: [sin, cos] of t·f, or [cos, sin] with flip_sin_to_cos; an odd
 * dim gets a last column of zeros, as get_timestep_embedding pads it.
 */
export function timestepEmbedding(t: Tensor, dim: number, flipSinToCos: boolean, freqShift: number): Tensor {
  const half = Math.floor(dim / 2);
  const freqs = t.graph.constant(timestepFrequencies(dim, freqShift), "float32", [1, half]);
  const args = mul(unsqueeze(t, [1]), freqs);
  const parts = flipSinToCos ? [cos(args), sin(args)] : [sin(args), cos(args)];
  if (dim % 2 !== 0) parts.push(mul(unsqueeze(t, [1]), 0));
  return concat(parts, 1);
}

/** TimestepEmbedding: linear_1 (in → dim) → SiLU → linear_2 (dim → dim). */
export function timeMlp(p: ParamSource, path: string, x: Tensor, inF: number, dim: number): Tensor {
  return linear(p, `${path}.linear_2`, silu(linear(p, `${path}.linear_1`, x, inF, dim)), dim, dim);
}
