/**
 * DDIM sampling with classifier-free guidance for a batch of images, each with its own context (the
 * prompt's embedding, or any point between embeddings) and one shared LoRA state or set of fine-tuned
 * UNet weights. Imagic renders its η × seed variants through this (one UNet call per step serves the
 * whole batch), and txt2img its one image.
 */
import { throwIfCancelled } from "../errors.js";
import type { LatentSize, LoraWeights, StableDiffusion, UnetWeights } from "../index.js";

export interface SampleOptions {
  /** Initial latents [N, 4, h, w] (scaled). */
  latents: Float32Array;
  /** h and w of the latents. */
  size: LatentSize;
  /** Conditional contexts [N, 77, D], one per image. */
  contexts: Float32Array;
  /**
   * The unconditional (negative) context [1, 77, D], shared by every image; needed when guidance > 1. A
   * list gives one per step (null-text inversion's optimized embeddings).
   */
  uncond?: Float32Array | readonly Float32Array[];
  guidance: number;
  steps: number;
  lora?: LoraWeights;
  /** Fully fine-tuned UNet weights replacing the checkpoint's (by name). */
  unet?: UnetWeights;
  onStep?: (step: number, total: number) => void;
  signal?: AbortSignal;
  /** Names the work in a cancellation message. */
  label?: string;
  /**
   * Replaces the latents after step i (0-based) — direct inversion moves a reconstruction onto the
   * inversion's trajectory this way.
   */
  correct?: (step: number, latents: Float32Array) => Float32Array;
}

/** Runs the DDIM loop and returns the final latents [N, 4, h, w]. */
export async function sampleLatents(sd: StableDiffusion, o: SampleOptions): Promise<Float32Array> {
  const ctxSize = 77 * sd.contextShape[1];
  const n = o.contexts.length / ctxSize;
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`sampleLatents: contexts hold ${o.contexts.length} values`);
  const per = o.latents.length / n;
  const guided = o.guidance > 1;
  const uncondAt = guided ? uncondPerStep(o.uncond, ctxSize, o.steps) : undefined;
  // diffusers' batch order: every unconditional item first, then the conditional ones.
  const context = guided ? new Float32Array(2 * n * ctxSize) : o.contexts;
  if (guided) context.set(o.contexts, n * ctxSize);
  const scheduler = sd.scheduler();
  scheduler.setTimesteps(o.steps);
  const timesteps = scheduler.timesteps;
  let latents = o.latents;
  for (let i = 0; i < timesteps.length; i++) {
    throwIfCancelled(o.signal, `${o.label ?? "sampling"} step ${i + 1}/${timesteps.length}`);
    const t = timesteps[i] as number;
    const uncond = uncondAt?.(i);
    if (uncond) for (let k = 0; k < n; k++) context.set(uncond, k * ctxSize);
    let input = latents;
    if (guided) {
      input = new Float32Array(2 * latents.length);
      input.set(latents);
      input.set(latents, latents.length);
    }
    const out = await sd.predictNoise(input, o.size, t, context, { lora: o.lora, unet: o.unet });
    // [uncond × N; cond × N] is the [2, …] layout cfg() guides, with N images per half.
    const pred = guided ? cfg(out, n * per, o.guidance) : out;
    latents = scheduler.step(pred, t, latents);
    if (o.correct) latents = o.correct(i, latents);
    o.onStep?.(i + 1, timesteps.length);
  }
  return latents;
}

/** The unconditional context of each step: one for all, or one per step. */
function uncondPerStep(
  uncond: SampleOptions["uncond"],
  ctxSize: number,
  steps: number,
): (step: number) => Float32Array {
  const list = uncond instanceof Float32Array ? [uncond] : (uncond ?? []);
  if (list.length !== 1 && list.length !== steps) {
    throw new Error(
      `sampleLatents: ${list.length} unconditional contexts for ${steps} steps (give 1 or ${steps})`,
    );
  }
  for (const u of list) {
    if (u.length !== ctxSize)
      throw new Error(`sampleLatents: uncond holds ${u.length} values, expected ${ctxSize}`);
  }
  return (step) => list[list.length === 1 ? 0 : step] as Float32Array;
}

/** uncond + g·(cond − uncond), over a [2, …] batch of model outputs (ε or v alike, as diffusers does). */
export function cfg(out: Float32Array, n: number, guidance: number): Float32Array {
  const res = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = out[i] as number;
    res[i] = u + guidance * ((out[n + i] as number) - u);
  }
  return res;
}
