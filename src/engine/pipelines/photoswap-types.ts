/**
 * The seam between Photoswap's parts (PHOTOSWAP-PLAN): the source photo's inversion (inversion.ts) hands
 * the joint sampler (photoswap.ts) an `InvertedSource`; the concept (concept.ts) hands it the learned
 * token, embedding and LoRA.
 *
 * The inversion runs on the checkpoint as it is, without any concept's LoRA, so one inversion of a photo
 * serves every concept swapped into it (it can be cached per photo and source prompt), and the source
 * branch reconstructs the photo whatever the concept is. The official code inverts with the DreamBooth
 * checkpoint instead; on a base model without LoRA (the fixtures) the two are the same computation.
 */
import type { LoraWeights } from "../models/lora.js";

export type InversionMethod = "null-text" | "direct";

export interface InvertedSource {
  method: InversionMethod;
  /** The encoded photo [1, 4, h, w], scaled (the VAE posterior mean × scaling_factor). */
  latents0: Float32Array;
  /** Latent height and width. */
  height: number;
  width: number;
  /** DDIM steps of the inversion; the sampler must use the same steps (and so the same timesteps). */
  steps: number;
  /** Classifier-free guidance the source branch samples with (null-text optimized its embeddings for it). */
  guidance: number;
  /** The inverted noise [1, 4, h, w]: z_N of the DDIM inversion. */
  xT: Float32Array;
  /** The source prompt it was inverted with (its text encoding is the source's conditional context). */
  prompt: string;
  /** null-text: the optimized unconditional context for sampling step i ([1, 77, D] each, N of them); absent: encode(""). */
  nullEmbeddings?: Float32Array[];
  /**
   * direct inversion: z_0 … z_N of the DDIM inversion (z_0 = latents0, z_N = xT). The sampler moves the
   * source branch onto trajectory[N−1−i] after sampling step i (PnP / "direct" inversion), so the
   * source reconstructs the photo exactly and the target reads its attention from the inversion path.
   */
  trajectory?: Float32Array[];
}

/**
 * What the swap needs of a learned concept (concept.ts holds the whole object: settings, losses, model).
 * The target prompt names `token` (e.g. "a photo of a sks dog"); its text encoding must use `embedding`
 * for that token's input row when present, and the UNet the concept's LoRA on the target rows.
 */
export interface ConceptAdapter {
  /** The rare single token the concept was taught as, e.g. "sks", and its tokenizer id. */
  token: string;
  tokenId: number;
  /** The class word, e.g. "dog": the target prompt says "<token> <subject>". */
  subject: string;
  /** The token's learned input embedding [D] (textual inversion); absent: the tokenizer's own row. */
  embedding?: Float32Array;
  /** LoRA on the UNet's attention projections (absent when the concept learned only its embedding). */
  lora?: LoraWeights;
}
