/**
 * What the training loops (Imagic, concept learning) share: seeded draws of timesteps and noise.
 */
import { GaussianRng, philox4x32 } from "../diffusion/rng.js";

/** Where each training step's timesteps and noise come from. */
export interface TrainingDraws {
  timesteps(n: number): number[];
  noise(n: number): Float32Array;
}

/**
 * The default draws, the same on every machine for a seed: noise from GaussianRng(seed); uniform integer
 * timesteps in [0, count) from Philox blocks under the seed's key, on a counter lane (word 2 = 1) that
 * GaussianRng's stream (word 2 = 0) never uses.
 */
export class SeededDraws implements TrainingDraws {
  private block = 0;
  private readonly key: [number, number];
  private readonly rng: GaussianRng;
  constructor(
    seed: number,
    private readonly count: number,
  ) {
    this.key = [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
    this.rng = new GaussianRng(seed);
  }
  timesteps(n: number): number[] {
    return Array.from({ length: n }, () => {
      const bits = philox4x32([this.block++ >>> 0, 0, 1, 0], this.key);
      return Math.floor(((bits[0] as number) / 2 ** 32) * this.count);
    });
  }
  noise(n: number): Float32Array {
    return this.rng.normal(n);
  }
}
