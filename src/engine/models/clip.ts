/**
 * CLIPTextModel (transformers models/clip/modeling_clip.py, CLIPTextTransformer): token + position
 * embeddings, pre-LayerNorm encoder layers with causal self-attention, final layer norm. The output is
 * last_hidden_state, the context Stable Diffusion conditions on.
 */
import type { Tensor } from "../graph/index.js";
import { add, attention, causalMask, gather, gelu, quickGelu, slice } from "../graph/index.js";
import type { TextEncoderConfig } from "./config.js";
import { layerNorm, linear } from "./layers.js";
import type { ParamSource } from "./params.js";

function activation(name: string, x: Tensor): Tensor {
  switch (name) {
    case "quick_gelu":
      return quickGelu(x);
    case "gelu":
      return gelu(x, "none");
    case "gelu_new":
    case "gelu_pytorch_tanh":
      return gelu(x, "tanh");
    default:
      throw new Error(
        `text encoder config: hidden_act "${name}" is not supported (quick_gelu, gelu, gelu_new)`,
      );
  }
}

/**
 * input_ids [B, L] (int64) → last_hidden_state [B, L, hidden] (float32). `embed` may rewrite the token
 * embeddings [B, L, hidden] before the position embeddings are added (a learned token's row).
 */
export function clipTextEncoder(
  p: ParamSource,
  c: TextEncoderConfig,
  ids: Tensor,
  embed?: (tokens: Tensor) => Tensor,
): Tensor {
  const d = c.hidden_size;
  const len = ids.shape[1] as number;
  if (len > c.max_position_embeddings) {
    throw new Error(
      `text encoder: ${len} tokens exceed max_position_embeddings ${c.max_position_embeddings}`,
    );
  }
  if (d % c.num_attention_heads !== 0) {
    throw new Error(
      `text encoder config: hidden_size ${d} is not divisible by ${c.num_attention_heads} heads`,
    );
  }
  const gathered = gather(p.get("embeddings.token_embedding.weight", [c.vocab_size, d]), ids, 0);
  const tokens = embed ? embed(gathered) : gathered;
  const positions = slice(
    p.get("embeddings.position_embedding.weight", [c.max_position_embeddings, d]),
    [0],
    [len],
    [0],
  );
  let h = add(tokens, positions);
  const mask = causalMask(h, len);
  const heads = c.num_attention_heads;
  const dimHead = d / heads;
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const path = `encoder.layers.${i}`;
    const x = layerNorm(p, `${path}.layer_norm1`, h, d, c.layer_norm_eps);
    const q = linear(p, `${path}.self_attn.q_proj`, x, d, d);
    const k = linear(p, `${path}.self_attn.k_proj`, x, d, d);
    const v = linear(p, `${path}.self_attn.v_proj`, x, d, d);
    const a = attention(q, k, v, { heads, scale: 1 / Math.sqrt(dimHead), mask });
    h = add(h, linear(p, `${path}.self_attn.out_proj`, a, d, d));
    const y = layerNorm(p, `${path}.layer_norm2`, h, d, c.layer_norm_eps);
    const mlp = linear(
      p,
      `${path}.mlp.fc2`,
      activation(c.hidden_act, linear(p, `${path}.mlp.fc1`, y, d, c.intermediate_size)),
      c.intermediate_size,
      d,
    );
    h = add(h, mlp);
  }
  return layerNorm(p, "final_layer_norm", h, d, c.layer_norm_eps);
}
