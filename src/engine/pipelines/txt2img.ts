/**
 * Text-to-image with DDIM and classifier-free guidance (diffusers' StableDiffusionPipeline with a
 * DDIMScheduler, eta 0): the pipeline the parity suite checks end to end.
 */
import { GaussianRng } from "../diffusion/rng.js";
import { throwIfCancelled } from "../errors.js";
import type { StableDiffusion } from "../index.js";

export interface Txt2ImgOptions {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  /** Classifier-free guidance scale; ≤ 1 turns guidance off (one UNet call per step). */
  guidance: number;
  /** Image side in pixels (square). */
  size: number;
  /** Initial latents [1, 4, s, s] (scaled); otherwise drawn from `seed`. */
  latents?: Float32Array;
  seed?: number;
  onStep?: (step: number, total: number) => void;
  signal?: AbortSignal;
}

export interface Txt2ImgResult {
  latents: Float32Array;
  /** [1, 3, size, size] in [-1, 1] (not clamped). */
  image: Float32Array;
}

export async function txt2img(sd: StableDiffusion, o: Txt2ImgOptions): Promise<Txt2ImgResult> {
  if (!Number.isInteger(o.steps) || o.steps < 1 || o.steps > 1000) {
    throw new Error(`txt2img: steps must be an integer in 1…1000, got ${o.steps}`);
  }
  const ls = sd.latentSize(o.size);
  const n = sd.latentChannels * ls * ls;
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
  const scheduler = sd.scheduler();
  scheduler.setTimesteps(o.steps);
  const timesteps = scheduler.timesteps;
  for (let i = 0; i < timesteps.length; i++) {
    throwIfCancelled(o.signal, `txt2img step ${i + 1}/${timesteps.length}`);
    const t = timesteps[i] as number;
    const input = guided ? concat2(latents, latents) : latents;
    const out = await sd.predictNoise(input, t, context);
    const pred = guided ? cfg(out, n, o.guidance) : out;
    latents = scheduler.step(pred, t, latents);
    o.onStep?.(i + 1, timesteps.length);
  }
  throwIfCancelled(o.signal, "txt2img decode");
  const image = await sd.decodeLatents(latents, o.size, o.size);
  return { latents, image };
}

function concat2(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
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
