/**
 * Full-weight fine-tuning of the UNet: which weights are trained, how they are named in a session
 * cache key, and whether a training run fits the memory budget before it starts.
 *
 * Trained weights are float32 graph *inputs* (StoreParams' `trainable`; in a training graph with Adam
 * inside, pieces of its one flat input), the rest stay initializers in the compute dtype. One compiled
 * session per trained subset then serves every fine-tune of the model (as LoRA's inputs do), and no
 * session holds a second copy of them as weights: a render feeds the host's Float32Arrays on each call,
 * a training run carries them (and Adam's state) from step to step.
 */
import { createHash } from "node:crypto";
import { UserFacingError } from "../../errors.js";
import { perLevel, type UNetConfig } from "./config.js";
import { isLoraTarget } from "./lora.js";

/** Trained UNet weights by checkpoint name (e.g. "mid_block.attentions.0.proj_in.weight"), float32. */
export type UnetWeights = Map<string, Float32Array>;

/**
 * Which UNet weights a full fine-tune trains: every one, the attention blocks' (every parameter under
 * `.attentions.` — norms, proj_in/out, attn1/attn2, feed-forward), LoRA's targets alone (to_q/k/v/out.0,
 * full rank), or any predicate over checkpoint names.
 */
export type UnetSubset = "all" | "attention" | "attention-projections" | ((name: string) => boolean);

export const UNET_SUBSETS = ["all", "attention", "attention-projections"] as const;

export function subsetFilter(subset: UnetSubset): (name: string) => boolean {
  if (typeof subset === "function") return subset;
  switch (subset) {
    case "all":
      return () => true;
    case "attention":
      return (n) => n.includes(".attentions.");
    case "attention-projections":
      return (n) => isLoraTarget(n.replace(/\.(weight|bias)$/, ""));
  }
}

/** Names a trained subset in a session cache key (the graph's inputs differ per subset). */
export function subsetKey(names: Iterable<string>): string {
  return createHash("sha256")
    .update([...names].sort().join("\n"))
    .digest("hex")
    .slice(0, 12);
}

export class TrainingMemoryError extends UserFacingError {
  override name = "TrainingMemoryError";
}

export interface TrainingMemoryArgs {
  config: UNetConfig;
  /** Values of the trained weights and of the frozen ones. */
  trainedParams: number;
  frozenParams: number;
  /** Bytes per value of the frozen weights and of the activations (the training compute dtype). */
  computeBytes: number;
  batch: number;
  /** Latent height and width. */
  height: number;
  width: number;
  contextLength?: number;
}

export interface TrainingMemory {
  /** The trained weights and Adam's m and v in and out of the training graph, the gradient and its flat
   *  layout (32 bytes per trained value, fp32: optim/flat-params.ts). */
  trained: number;
  /** Frozen weights held by the session in the compute dtype. */
  frozen: number;
  /** Activations the backward pass keeps, roughly (see estimateActivationBytes). */
  activations: number;
  total: number;
}

/**
 * What one full fine-tune step needs, roughly: 32 B per trained value (weights, m and v as the training
 * graph's carried inputs and as its outputs, the gradient and its flat layout, all fp32; optim/flat-params.ts),
 * the frozen weights in the compute dtype, and the activations the backward pass keeps.
 */
export function estimateTrainingMemory(a: TrainingMemoryArgs): TrainingMemory {
  const trained = 32 * a.trainedParams;
  const frozen = a.computeBytes * a.frozenParams;
  const activations = estimateActivationBytes(a);
  return { trained, frozen, activations, total: trained + frozen + activations };
}

/**
 * Activations kept for the backward pass, counted per level of the UNet in values of the compute
 * dtype: ~10 feature maps (C × h × w) per resnet; per transformer layer ~40 feature maps (norms,
 * q/k/v/out, the GEGLU feed-forward's 8C-wide projection) plus the self-attention scores and
 * probabilities (2 × heads × (hw)²) and the cross-attention ones (2 × heads × hw × 77). Down blocks
 * have layers_per_block blocks, up blocks one more, the mid block 2 resnets + 1 transformer. A 1.5×
 * margin covers the backward pass's transient buffers. For SD 1.5 at 64² latents, batch 1: ≈ 12 GB
 * in fp32 (6 GB in fp16), beside the 27.5 GB of weights, gradients and Adam state when every weight
 * is trained.
 */
export function estimateActivationBytes(a: TrainingMemoryArgs): number {
  const c = a.config;
  const ctx = a.contextLength ?? 77;
  const levels = c.block_out_channels.length;
  const heads = perLevel(c.attention_head_dim, levels);
  const tLayers = perLevel(c.transformer_layers_per_block, levels);
  let values = 0;
  const level = (i: number, blocks: number, attention: boolean) => {
    const ch = c.block_out_channels[i] as number;
    const hw = Math.ceil(a.height / 2 ** i) * Math.ceil(a.width / 2 ** i);
    values += blocks * 10 * ch * hw;
    if (attention) {
      const h = heads[i] as number;
      const perLayer = 40 * ch * hw + 2 * h * hw * hw + 2 * h * hw * ctx;
      values += blocks * (tLayers[i] as number) * perLayer;
    }
  };
  c.down_block_types.forEach((t, i) => {
    level(i, c.layers_per_block, t === "CrossAttnDownBlock2D");
  });
  c.up_block_types.forEach((t, j) => {
    level(levels - 1 - j, c.layers_per_block + 1, t === "CrossAttnUpBlock2D");
  });
  const mid = levels - 1;
  const midCh = c.block_out_channels[mid] as number;
  const midHw = Math.ceil(a.height / 2 ** mid) * Math.ceil(a.width / 2 ** mid);
  const mh = heads[mid] as number;
  values += 2 * 10 * midCh * midHw + 40 * midCh * midHw + 2 * mh * midHw * midHw + 2 * mh * midHw * ctx;
  return Math.ceil(1.5 * a.batch * values * a.computeBytes);
}

/** Refuses a run whose estimate exceeds the budget, naming both and what to change. */
export function checkTrainingMemory(m: TrainingMemory, limit: number, what: string): void {
  if (m.total <= limit) return;
  throw new TrainingMemoryError(
    `${what} needs about ${formatBytes(m.total)} (trained weights + gradients + Adam state ${formatBytes(m.trained)}, ` +
      `frozen weights ${formatBytes(m.frozen)}, activations ${formatBytes(m.activations)}), more than the ` +
      `training memory limit of ${formatBytes(limit)} (ENGINE_MAX_TRAIN_BYTES): train fewer weights ` +
      `(e.g. attention only, or LoRA), a smaller batch or image, or raise the limit`,
  );
}

export function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}
