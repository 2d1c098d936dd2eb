/**
 * The CLIP text encoder with learned tokens' input embeddings as a graph input (textual inversion, Gal
 * et al. 2023): the rows of the token embeddings where a learned token stands (a 0/1 mask per token,
 * from the ids on the host) are replaced by that token's input row. The forward graph gives the context; the VJP graph, seeded with
 * an upstream gradient d loss / d context (from the UNet's denoising loss), gives d loss / d row — the
 * loss's gradient pulled back through the text encoder without compiling it into the UNet's loss graph.
 */
import { add, Graph, gather, grad, matmul, mul, reduceSum, sub, type Tensor } from "../graph/index.js";
import { clipTextEncoder } from "./clip.js";
import { IO } from "./components.js";
import type { TextEncoderConfig } from "./config.js";
import { StoreParams, type WeightSource } from "./params.js";

export const LEARNED_TOKEN_IO = {
  /** [B, L, K] float32: 1 where learned token k stands. */
  mask: "token_mask",
  /** [K, hidden] float32: the learned tokens' input embeddings. */
  embedding: "token_embedding",
  /** [B, L, hidden]: d loss / d last_hidden_state (VJP graph only). */
  upstream: "d_last_hidden_state",
  /** [K, hidden]: d loss / d token_embedding (VJP graph only). */
  dEmbedding: "d_token_embedding",
} as const;

/**
 * `tokens` learned tokens (default 1); `vjp`: the gradient graph (inputs + upstream → d embeddings)
 * instead of the forward one (→ context).
 */
export function learnedTokenGraph(
  store: WeightSource,
  c: TextEncoderConfig,
  o: { batch: number; tokens?: number; length?: number; vjp: boolean },
): Graph {
  const length = o.length ?? 77;
  const d = c.hidden_size;
  const g = new Graph(o.vjp ? "text_encoder_token_vjp" : "text_encoder_token");
  const ids = g.input(IO.inputIds, "int64", [o.batch, length]);
  const k = o.tokens ?? 1;
  const mask = g.input(LEARNED_TOKEN_IO.mask, "float32", [o.batch, length, k]);
  const rows = g.input(LEARNED_TOKEN_IO.embedding, "float32", [k, d]);
  const p = new StoreParams(g, store, { origin: "text_encoder" });
  // tokens·(1 − Σ_k mask_k) + mask·rows: token k's row where its mask is 1, the vocabulary's elsewhere
  // (exactly: 0·x + row and 1·x + 0).
  const covered = reduceSum(mask, [2], true);
  const out = clipTextEncoder(p, c, ids, (tokens: Tensor) =>
    add(mul(tokens, sub(1, covered)), matmul(mask, rows)),
  );
  if (!o.vjp) {
    g.output(IO.lastHiddenState, out);
    return g;
  }
  const upstream = g.input(LEARNED_TOKEN_IO.upstream, "float32", [o.batch, length, d]);
  // ⟨context, upstream⟩ has the gradient upstream·∂context/∂row: the vector-Jacobian product.
  const seeded = reduceSum(mul(out, upstream), [0, 1, 2], false);
  g.output(LEARNED_TOKEN_IO.dEmbedding, grad(seeded, [rows])[0] as Tensor);
  return g;
}

/** A token's row of the vocabulary's input embeddings: ids [n] (int64) → [n, hidden]. */
export function tokenRowsGraph(store: WeightSource, c: TextEncoderConfig, n: number): Graph {
  const g = new Graph("token_rows");
  const ids = g.input(IO.inputIds, "int64", [n]);
  const p = new StoreParams(g, store, { origin: "text_encoder" });
  g.output(
    LEARNED_TOKEN_IO.embedding,
    gather(p.get("embeddings.token_embedding.weight", [c.vocab_size, c.hidden_size]), ids, 0),
  );
  return g;
}
