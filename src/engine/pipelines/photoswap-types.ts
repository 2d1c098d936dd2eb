/**
 * The seams between Photoswap's parts (PHOTOSWAP-PLAN.md): what an inversion of the source photo hands the
 * joint sampler, and what a learned concept hands the swap. The inversions and concept learning
 * (swap-invert) produce these; the sampler (photoswap.ts) consumes them.
 */
import type { LoraWeights } from "../models/lora.js";

/** The source photo, inverted with its source prompt: where the joint sampling starts and what keeps it on the photo. */
export interface InvertedSource {
  /** The encoded photo [1, 4, h, w], scaled. */
  latents0: Float32Array;
  /** Latent size. */
  height: number;
  width: number;
  /** The inverted noise [1, 4, h, w]: the start of both branches. */
  xT: Float32Array;
  /** The source prompt it was inverted with. */
  prompt: string;
  /** Null-text inversion: the optimized unconditional context for sampling step i ([1, 77, D] each); absent: encode(""). */
  nullEmbeddings?: Float32Array[];
  /**
   * Direct inversion: z_0 … z_N of the DDIM inversion; after sampling step i the source branch is moved
   * onto trajectory[N − 1 − i] (PnP "direct inversion"), so the source reconstructs the photo exactly.
   */
  trajectory?: Float32Array[];
}

/**
 * A subject learned from reference photos, as the swap uses it. The target prompt names it as
 * "<token> <subject>" ("sks dog"); its text encoding uses `tokenEmbedding` for the token when present.
 *
 * The LoRA acts on the **target rows only** (docs/PHOTOSWAP.md, "Where the concept acts"): the source
 * branch is the base model, so an inversion does not depend on the concept and is cached per photo.
 */
export interface SwapConcept {
  /** The rare token that stands for the subject (one token of the tokenizer, e.g. "sks"). */
  token: string;
  /** The class word ("dog"). */
  subject: string;
  /** The model the concept was learned on: a concept of another model is refused. */
  modelId: string;
  /** The learned input embedding of `token` ([D] of the text encoder), when textual inversion ran. */
  tokenEmbedding?: Float32Array;
  /** The UNet LoRA learned with DreamBooth-style fine-tuning. */
  lora?: LoraWeights;
}
