/**
 * diffusers' attention modules: Attention (attention_processor.py), FeedForward with GEGLU and
 * BasicTransformerBlock (attention.py), Transformer2DModel (transformers/transformer_2d.py).
 */
import type { Tensor } from "../graph/index.js";
import { add, attention, cast, gelu, mul, reshape, split, transpose } from "../graph/index.js";
import { conv, groupNorm, layerNorm, linear } from "./layers.js";
import type { LoraHook } from "./lora.js";
import type { ParamSource } from "./params.js";

/** A linear projection that a LoRA adapter may ride on (diffusers names: to_q, to_k, to_v, to_out.0). */
function projection(
  p: ParamSource,
  lora: LoraHook | undefined,
  path: string,
  x: Tensor,
  inF: number,
  outF: number,
  bias: boolean,
): Tensor {
  const y = linear(p, path, x, inF, outF, bias);
  return lora ? lora.apply(path, x, y, inF, outF) : y;
}

export interface AttentionOptions {
  heads: number;
  dimHead: number;
  queryDim: number;
  /** Width of the context for cross-attention (equals queryDim for self-attention). */
  contextDim: number;
  /** Whether to_q/to_k/to_v carry biases (the VAE's do, the UNet's don't). */
  qkvBias: boolean;
  /** Compute the scores and softmax in float32 (SD 2's upcast_attention). */
  upcast?: boolean;
  lora?: LoraHook;
  control?: AttentionHook;
}

/**
 * Attention control (Prompt-to-Prompt, Photoswap): a hook that decides how each module of the UNet attends,
 * given its projections, and may watch its output. Without one, a module is plain multi-head attention.
 */
export interface AttentionHook {
  /**
   * The module's attention before to_out: q [B, L, heads·d], k/v [B, S, heads·d] (after LoRA and the
   * float32 upcast), for the module at `path` (e.g. "mid_block.attentions.0.transformer_blocks.0.attn2").
   */
  attend(
    path: string,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: { heads: number; scale: number; cross: boolean },
  ): Tensor;
  /** The module's output (after to_out), e.g. to expose it as a graph output. */
  observe?(path: string, out: Tensor): void;
}

/** Multi-head attention over [B, L, C] tokens; self-attention when `context` is undefined. */
export function attentionBlock(
  p: ParamSource,
  path: string,
  x: Tensor,
  context: Tensor | undefined,
  o: AttentionOptions,
): Tensor {
  const inner = o.heads * o.dimHead;
  const ctx = context ?? x;
  let q = projection(p, o.lora, `${path}.to_q`, x, o.queryDim, inner, o.qkvBias);
  let k = projection(p, o.lora, `${path}.to_k`, ctx, o.contextDim, inner, o.qkvBias);
  let v = projection(p, o.lora, `${path}.to_v`, ctx, o.contextDim, inner, o.qkvBias);
  if (o.upcast) {
    q = cast(q, "float32");
    k = cast(k, "float32");
    v = cast(v, "float32");
  }
  const scale = 1 / Math.sqrt(o.dimHead);
  const attended = o.control
    ? o.control.attend(path, q, k, v, { heads: o.heads, scale, cross: context !== undefined })
    : attention(q, k, v, { heads: o.heads, scale });
  const out = projection(p, o.lora, `${path}.to_out.0`, cast(attended, x.dtype), inner, o.queryDim, true);
  o.control?.observe?.(path, out);
  return out;
}

/** FeedForward with GEGLU: proj → (hidden, gate) → hidden · GELU(gate) → net.2. */
export function feedForwardGeglu(p: ParamSource, path: string, x: Tensor, dim: number): Tensor {
  const inner = dim * 4;
  const proj = linear(p, `${path}.net.0.proj`, x, dim, inner * 2);
  const [hidden, gate] = split(proj, [inner, inner], -1) as [Tensor, Tensor];
  return linear(p, `${path}.net.2`, mul(hidden, gelu(gate, "none")), inner, dim);
}

export interface TransformerOptions {
  heads: number;
  dimHead: number;
  contextDim: number;
  upcast: boolean;
  lora?: LoraHook;
  control?: AttentionHook;
}

/** Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm'd and residual. */
export function basicTransformerBlock(
  p: ParamSource,
  path: string,
  x: Tensor,
  context: Tensor,
  o: TransformerOptions,
): Tensor {
  const dim = o.heads * o.dimHead;
  const attn = {
    heads: o.heads,
    dimHead: o.dimHead,
    queryDim: dim,
    qkvBias: false,
    upcast: o.upcast,
    lora: o.lora,
    control: o.control,
  };
  let h = x;
  h = add(
    attentionBlock(p, `${path}.attn1`, layerNorm(p, `${path}.norm1`, h, dim, 1e-5), undefined, {
      ...attn,
      contextDim: dim,
    }),
    h,
  );
  h = add(
    attentionBlock(p, `${path}.attn2`, layerNorm(p, `${path}.norm2`, h, dim, 1e-5), context, {
      ...attn,
      contextDim: o.contextDim,
    }),
    h,
  );
  return add(feedForwardGeglu(p, `${path}.ff`, layerNorm(p, `${path}.norm3`, h, dim, 1e-5), dim), h);
}

export interface Transformer2DOptions extends TransformerOptions {
  groups: number;
  layers: number;
  /** proj_in/proj_out as Linear on tokens (SD 2) rather than 1×1 convs (SD 1). */
  linearProjection: boolean;
}

/** [B, C, H, W] → GroupNorm (eps 1e-6) → proj_in → tokens → transformer blocks → proj_out → + input. */
export function transformer2D(
  p: ParamSource,
  path: string,
  x: Tensor,
  context: Tensor,
  o: Transformer2DOptions,
): Tensor {
  const [, c, hgt, wid] = x.shape as [number, number, number, number];
  const inner = o.heads * o.dimHead;
  let h = groupNorm(p, `${path}.norm`, x, c, o.groups, 1e-6);
  if (o.linearProjection) {
    h = linear(p, `${path}.proj_in`, toTokens(h), c, inner);
  } else {
    h = toTokens(conv(p, `${path}.proj_in`, h, c, inner, { kernel: 1 }));
  }
  for (let i = 0; i < o.layers; i++)
    h = basicTransformerBlock(p, `${path}.transformer_blocks.${i}`, h, context, o);
  if (o.linearProjection) {
    h = fromTokens(linear(p, `${path}.proj_out`, h, inner, c), hgt, wid);
  } else {
    h = conv(p, `${path}.proj_out`, fromTokens(h, hgt, wid), inner, c, { kernel: 1 });
  }
  return add(h, x);
}

/** [B, C, H, W] → [B, H·W, C]. */
export function toTokens(x: Tensor): Tensor {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  return transpose(reshape(x, [b, c, h * w]), [0, 2, 1]);
}

/** [B, H·W, C] → [B, C, H, W]. */
export function fromTokens(x: Tensor, h: number, w: number): Tensor {
  const [b, , c] = x.shape as [number, number, number];
  return reshape(transpose(x, [0, 2, 1]), [b, c, h, w]);
}
