/**
 * The CLIP text encoder with one token's input embedding as a graph input (textual inversion, Gal et
 * al. 2023): the rows of the token embeddings where the token stands (a 0/1 mask, from the ids on the
 * host) are replaced by the input row. The forward graph gives the context; the VJP graph, seeded with
 * an upstream gradient d loss / d context (from the UNet's denoising loss), gives d loss / d row — the
 * loss's gradient pulled back through the text encoder without compiling it into the UNet's loss graph.
 */
import { add, Graph, gather, grad, mul, reduceSum, sub, type Tensor } from "../graph/index.js";
import { clipTextEncoder } from "./clip.js";
import { IO } from "./components.js";
import type { TextEncoderConfig } from "./config.js";
import { StoreParams, type WeightSource } from "./params.js";

export const LEARNED_TOKEN_IO = {
  /** [B, L, 1] float32: 1 where the learned token stands. */
  mask: "token_mask",
  /** [hidden] float32: the token's input embedding. */
  embedding: "token_embedding",
  /** [B, L, hidden]: d loss / d last_hidden_state (VJP graph only). */
  upstream: "d_last_hidden_state",
  /** [hidden]: d loss / d token_embedding (VJP graph only). */
  dEmbedding: "d_token_embedding",
} as const;

/** `vjp`: the gradient graph (inputs + upstream → d embedding) instead of the forward one (→ context). */
export function learnedTokenGraph(
  store: WeightSource,
  c: TextEncoderConfig,
  o: { batch: number; length?: number; vjp: boolean },
): Graph {
  const length = o.length ?? 77;
  const d = c.hidden_size;
  const g = new Graph(o.vjp ? "text_encoder_token_vjp" : "text_encoder_token");
  const ids = g.input(IO.inputIds, "int64", [o.batch, length]);
  const mask = g.input(LEARNED_TOKEN_IO.mask, "float32", [o.batch, length, 1]);
  const row = g.input(LEARNED_TOKEN_IO.embedding, "float32", [d]);
  const p = new StoreParams(g, store, { origin: "text_encoder" });
  // tokens + mask·(row − tokens): the row where the mask is 1, the vocabulary's embedding elsewhere.
  const out = clipTextEncoder(p, c, ids, (tokens: Tensor) => add(tokens, mul(mask, sub(row, tokens))));
  if (!o.vjp) {
    g.output(IO.lastHiddenState, out);
    return g;
  }
  const upstream = g.input(LEARNED_TOKEN_IO.upstream, "float32", [o.batch, length, d]);
  // ⟨context, upstream⟩ has the gradient upstream·∂context/∂row: the vector-Jacobian product.
  const seeded = reduceSum(mul(out, upstream), [0, 1, 2], false);
  g.output(LEARNED_TOKEN_IO.dEmbedding, grad(seeded, [row])[0] as Tensor);
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
