/**
 * Text-to-image with DDIM and classifier-free guidance (diffusers' StableDiffusionPipeline with a
 * DDIMScheduler, eta 0): the pipeline the parity suite checks end to end.
 */
import { GaussianRng } from "../diffusion/rng.js";
import { throwIfCancelled } from "../errors.js";
import type { StableDiffusion } from "../index.js";
import { sampleLatents } from "./sample.js";

export interface Txt2ImgOptions {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  /** Classifier-free guidance scale; ≤ 1 turns guidance off (one UNet call per step). */
  guidance: number;
  /** Image height and width in pixels, each a multiple of the VAE factor (8). */
  height: number;
  width: number;
  /** Initial latents [1, 4, height/8, width/8] (scaled); otherwise drawn from `seed`. */
  latents?: Float32Array;
  seed?: number;
  onStep?: (step: number, total: number) => void;
  signal?: AbortSignal;
}

export interface Txt2ImgResult {
  latents: Float32Array;
  /** [1, 3, height, width] in [-1, 1] (not clamped). */
  image: Float32Array;
}

export async function txt2img(sd: StableDiffusion, o: Txt2ImgOptions): Promise<Txt2ImgResult> {
  if (!Number.isInteger(o.steps) || o.steps < 1 || o.steps > 1000) {
    throw new Error(`txt2img: steps must be an integer in 1…1000, got ${o.steps}`);
  }
  const size = sd.latentSize(o.height, o.width);
  const n = sd.latentChannels * size.height * size.width;
  let latents: Float32Array;
  if (o.latents) {
    if (o.latents.length !== n)
      throw new Error(`txt2img: latents hold ${o.latents.length} values, expected ${n}`);
    latents = o.latents;
  } else {
    // DDIM's init_noise_sigma is 1: the initial latents are plain standard normal noise.
    latents = new GaussianRng(o.seed ?? 0).normal(n);
  }
  const guided = o.guidance > 1;
  // diffusers' order: the unconditional (negative) context first, then the prompt's.
  const context = await sd.encodeText(guided ? [o.negativePrompt ?? "", o.prompt] : [o.prompt]);
  const ctxSize = context.length / (guided ? 2 : 1);
  latents = await sampleLatents(sd, {
    latents,
    size,
    contexts: context.subarray(context.length - ctxSize),
    ...(guided ? { uncond: context.subarray(0, ctxSize) } : {}),
    guidance: o.guidance,
    steps: o.steps,
    onStep: o.onStep,
    signal: o.signal,
    label: "txt2img",
  });
  throwIfCancelled(o.signal, "txt2img decode");
  const image = await sd.decodeLatents(latents, size);
  return { latents, image };
}
