/**
 * DDIM inversion: run the sampler backwards from clean latents towards noise, conditioned on a context
 * without guidance (diffusers' DDIMInverseScheduler with the same "leading" timesteps, ascending).
 */
import { throwIfCancelled } from "../errors.js";
import type { LatentSize, StableDiffusion } from "../index.js";

export interface InvertOptions {
  /** Clean latents [1, 4, h, w] (scaled). */
  latents: Float32Array;
  /** h and w of the latents. */
  size: LatentSize;
  /** [1, 77, D]. */
  context: Float32Array;
  steps: number;
  signal?: AbortSignal;
  onStep?: (step: number, total: number) => void;
}

/** The latents after each inversion step, the last being the inverted noise; `timesteps` ascending. */
export async function ddimInvert(
  sd: StableDiffusion,
  o: InvertOptions,
): Promise<{ timesteps: number[]; latents: Float32Array[] }> {
  const scheduler = sd.scheduler();
  scheduler.setTimesteps(o.steps);
  const timesteps = scheduler.inversionTimesteps();
  const out: Float32Array[] = [];
  let x = o.latents;
  for (let i = 0; i < timesteps.length; i++) {
    throwIfCancelled(o.signal, `inversion step ${i + 1}/${timesteps.length}`);
    const t = timesteps[i] as number;
    const pred = await sd.predictNoise(x, o.size, t, o.context);
    x = scheduler.invertStep(pred, t, x);
    out.push(x);
    o.onStep?.(i + 1, timesteps.length);
  }
  return { timesteps, latents: out };
}
