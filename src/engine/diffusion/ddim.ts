/**
 * DDIM sampling and inversion with the noise schedule of a checkpoint's scheduler_config.json, computing
 * what diffusers' DDIMScheduler / DDIMInverseScheduler compute (eta 0 unless asked otherwise).
 *
 * The model's output is converted to (ε, x₀) inside each step, so epsilon- and v-prediction checkpoints
 * go through the same update. Latents are flat Float32Arrays; arithmetic is float64, results float32.
 */
import type { SchedulerConfig } from "../models/config.js";
import { SchedulerConfigSchema } from "../models/config.js";

export interface StepOptions {
  /** DDIM's η: 0 is deterministic DDIM, 1 is DDPM-like. η > 0 needs `noise` of the sample's length. */
  eta?: number;
  noise?: Float32Array;
}

export class DDIMScheduler {
  readonly config: SchedulerConfig;
  /** ᾱ_t for t = 0 … num_train_timesteps−1, float32 as diffusers holds them. */
  readonly alphasCumprod: Float32Array;
  /** ᾱ used for the step past t = 0 (sampling) / before it (inversion): 1 or ᾱ_0 per set_alpha_to_one. */
  readonly finalAlphaCumprod: number;
  private steps = 0;
  private table: number[] = [];

  constructor(config: SchedulerConfig) {
    this.config = config;
    this.alphasCumprod = alphasCumprod(config);
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : (this.alphasCumprod[0] as number);
  }

  /** From a scheduler_config.json object (any SD scheduler class: DDIM takes its betas and offsets). */
  static fromConfig(config: SchedulerConfig | Record<string, unknown>): DDIMScheduler {
    return new DDIMScheduler(SchedulerConfigSchema.parse(config));
  }

  get numTrainTimesteps(): number {
    return this.config.num_train_timesteps;
  }

  get numInferenceSteps(): number {
    return this.steps;
  }

  /** Sampling timesteps, descending, for the steps set by setTimesteps(). */
  get timesteps(): readonly number[] {
    return this.table;
  }

  setTimesteps(steps: number): void {
    const n = this.numTrainTimesteps;
    if (!Number.isInteger(steps) || steps < 1 || steps > n) {
      throw new RangeError(
        `DDIM steps must be an integer from 1 to ${n} (num_train_timesteps), got ${steps}`,
      );
    }
    this.steps = steps;
    this.table = samplingTimesteps(this.config, steps);
  }

  /** The timestep a sampling step from `t` lands on (negative past the end). */
  prevTimestep(t: number): number {
    return t - Math.floor(this.numTrainTimesteps / this.requireSteps());
  }

  /** Inversion timesteps, ascending: the timesteps at which the model is evaluated, as DDIMInverseScheduler. */
  inversionTimesteps(): number[] {
    this.requireSteps();
    return [...this.table].reverse();
  }

  /** x_{t−Δ} from x_t and the model's output at t (DDIMScheduler.step, prev_sample). */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, options: StepOptions = {}): Float32Array {
    const prev = this.prevTimestep(t);
    const aT = this.alpha(t);
    const aPrev = prev >= 0 ? this.alpha(prev) : this.finalAlphaCumprod;
    const eta = options.eta ?? 0;
    const variance = ((1 - aPrev) / (1 - aT)) * (1 - aT / aPrev);
    const std = eta * Math.sqrt(variance);
    if (std > 0 && options.noise?.length !== sample.length) {
      throw new RangeError(`DDIM step with eta ${eta} needs noise of length ${sample.length}`);
    }
    const dirScale = Math.sqrt(Math.max(0, 1 - aPrev - std * std));
    const sqrtPrev = Math.sqrt(aPrev);
    const out = new Float32Array(sample.length);
    this.decompose(modelOutput, t, sample, (i, x0, eps) => {
      out[i] = sqrtPrev * x0 + dirScale * eps + (std > 0 ? std * (options.noise?.[i] as number) : 0);
    });
    return out;
  }

  /**
   * One DDIM inversion step (DDIMInverseScheduler.step): from x at the previous timestep (t − Δ, or the
   * clean end when t − Δ < 0) to x_t, with the model's output evaluated at t on the current sample.
   */
  invertStep(modelOutput: Float32Array, t: number, sample: Float32Array): Float32Array {
    checkLengths(modelOutput, sample);
    const from = Math.min(this.prevTimestep(t), this.numTrainTimesteps - 1);
    const aFrom = from >= 0 ? this.alpha(from) : this.finalAlphaCumprod;
    const aTo = this.alpha(t);
    const { sqA, sqB } = this.predictionScales(aFrom);
    const out = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) {
      const m = modelOutput[i] as number;
      const x = sample[i] as number;
      // DDIMInverseScheduler clips x₀ but keeps the unclipped ε.
      const [x0, eps] = this.toX0Eps(m, x, sqA, sqB, false);
      out[i] = Math.sqrt(aTo) * x0 + Math.sqrt(1 - aTo) * eps;
    }
    return out;
  }

  /** The model's estimate of the clean sample x₀ at t (for previews). */
  predictOriginal(modelOutput: Float32Array, t: number, sample: Float32Array): Float32Array {
    const out = new Float32Array(sample.length);
    this.decompose(modelOutput, t, sample, (i, x0) => {
      out[i] = x0;
    });
    return out;
  }

  /**
   * √ᾱ_t and √(1−ᾱ_t) for each timestep of a batch, in float32: the scales of q(x_t | x₀) = √ᾱ_t·x₀ +
   * √(1−ᾱ_t)·ε that the denoising loss graph (models/components.ts, lossGraph) takes as inputs, to noise x₀
   * and form its ε or v target (√ᾱ_t·ε − √(1−ᾱ_t)·x₀) on the device.
   */
  noiseScales(ts: readonly number[]): { sqrtAlpha: Float32Array; sqrtOneMinusAlpha: Float32Array } {
    const sqrtAlpha = new Float32Array(ts.length);
    const sqrtOneMinusAlpha = new Float32Array(ts.length);
    ts.forEach((t, i) => {
      const a = this.alpha(t);
      sqrtAlpha[i] = Math.sqrt(a);
      sqrtOneMinusAlpha[i] = Math.sqrt(1 - a);
    });
    return { sqrtAlpha, sqrtOneMinusAlpha };
  }

  private requireSteps(): number {
    if (this.steps === 0) throw new Error("DDIMScheduler: call setTimesteps(n) first");
    return this.steps;
  }

  private alpha(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new RangeError(`timestep ${t} is outside 0…${this.numTrainTimesteps - 1}`);
    }
    return this.alphasCumprod[t] as number;
  }

  private predictionScales(a: number): { sqA: number; sqB: number } {
    return { sqA: Math.sqrt(a), sqB: Math.sqrt(1 - a) };
  }

  /** (x₀, ε) from one element of the model output and of x_t, with clipping as DDIMScheduler.step does it. */
  private toX0Eps(m: number, x: number, sqA: number, sqB: number, recomputeEps = true): [number, number] {
    let x0: number;
    let eps: number;
    if (this.config.prediction_type === "v_prediction") {
      x0 = sqA * x - sqB * m;
      eps = sqA * m + sqB * x;
    } else {
      x0 = (x - sqB * m) / sqA;
      eps = m;
    }
    if (this.config.clip_sample) {
      const r = this.config.clip_sample_range;
      x0 = Math.min(r, Math.max(-r, x0));
      if (recomputeEps) eps = (x - sqA * x0) / sqB;
    }
    return [x0, eps];
  }

  private decompose(
    modelOutput: Float32Array,
    t: number,
    sample: Float32Array,
    each: (i: number, x0: number, eps: number) => void,
  ): void {
    checkLengths(modelOutput, sample);
    const { sqA, sqB } = this.predictionScales(this.alpha(t));
    for (let i = 0; i < sample.length; i++) {
      const [x0, eps] = this.toX0Eps(modelOutput[i] as number, sample[i] as number, sqA, sqB);
      each(i, x0, eps);
    }
  }
}

function checkLengths(a: Float32Array, b: Float32Array): void {
  if (a.length !== b.length)
    throw new RangeError(`model output has ${a.length} values but the sample has ${b.length}`);
}

/** torch.linspace(start, end, n, dtype=float32) on the CPU: float32 step, filled from both ends. */
function linspaceF32(start: number, end: number, n: number): number[] {
  const f = Math.fround;
  const [a, b] = [f(start), f(end)];
  if (n === 1) return [a];
  const step = f(f(b - a) / (n - 1));
  return Array.from({ length: n }, (_, i) => (i < n / 2 ? f(a + f(step * i)) : f(b - f(step * (n - 1 - i)))));
}

/** numpy's round(): halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function betas(config: SchedulerConfig): number[] {
  const base = scheduleBetas(config);
  return config.rescale_betas_zero_snr ? rescaleZeroTerminalSnr(base) : base;
}

function scheduleBetas(config: SchedulerConfig): number[] {
  const n = config.num_train_timesteps;
  if (config.trained_betas) {
    if (config.trained_betas.length !== n) {
      throw new RangeError(
        `trained_betas has ${config.trained_betas.length} values, num_train_timesteps is ${n}`,
      );
    }
    return config.trained_betas.map(Math.fround);
  }
  switch (config.beta_schedule) {
    case "linear":
      return linspaceF32(config.beta_start, config.beta_end, n);
    case "scaled_linear":
      return linspaceF32(Math.sqrt(config.beta_start), Math.sqrt(config.beta_end), n).map((b) =>
        Math.fround(b * b),
      );
    case "squaredcos_cap_v2": {
      // Glide's cosine schedule: β_i = 1 − ᾱ(t_{i+1}) / ᾱ(t_i), capped at 0.999.
      const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
      return Array.from({ length: n }, (_, i) =>
        Math.fround(Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999)),
      );
    }
  }
}

/**
 * diffusers' rescale_zero_terminal_snr (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
 * are Flawed", Algorithm 1), in torch's float32 operations and order: √ᾱ is shifted so that its last value
 * is 0 and scaled so that its first is kept, and the betas are recomputed from the new ᾱ — the last β is 1,
 * so ᾱ at the last timestep is exactly 0 (pure noise, zero signal-to-noise ratio).
 */
function rescaleZeroTerminalSnr(b: readonly number[]): number[] {
  const f = Math.fround;
  const sqrtBar = cumprodF32(b.map((x) => f(1 - x))).map((a) => f(Math.sqrt(a)));
  const first = sqrtBar[0] as number;
  const last = sqrtBar[sqrtBar.length - 1] as number;
  const scale = f(first / f(first - last));
  const bar = sqrtBar.map((s) => f(f(f(s - last) * scale) ** 2));
  return bar.map((a, i) => f(1 - (i === 0 ? a : f(a / (bar[i - 1] as number)))));
}

/** torch.cumprod over float32 values on the CPU: the running product in float64, each entry rounded. */
function cumprodF32(values: readonly number[]): number[] {
  let acc = 1;
  return values.map((v) => {
    acc *= v;
    return Math.fround(acc);
  });
}

/**
 * ᾱ_t = Π (1 − β_i) over float32 alphas, as torch.cumprod computes it on the CPU: the running product in
 * float64 (its accumulation type for float32), each ᾱ_t rounded to float32 — a float32 running product
 * drifts a few ulps from it by the end of the table.
 */
function alphasCumprod(config: SchedulerConfig): Float32Array {
  return Float32Array.from(cumprodF32(betas(config).map((b) => Math.fround(1 - b))));
}

/** Sampling timesteps, descending, for each of diffusers' timestep_spacing modes. */
function samplingTimesteps(config: SchedulerConfig, steps: number): number[] {
  const n = config.num_train_timesteps;
  switch (config.timestep_spacing) {
    case "leading": {
      const ratio = Math.floor(n / steps);
      return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + config.steps_offset);
    }
    case "trailing": {
      const ratio = n / steps;
      return Array.from({ length: steps }, (_, i) => roundHalfEven(n - i * ratio) - 1);
    }
    case "linspace": {
      // np.linspace(0, n − 1, steps) in float64, rounded, descending.
      const step = (n - 1) / Math.max(1, steps - 1);
      return Array.from({ length: steps }, (_, i) =>
        roundHalfEven(i === steps - 1 ? n - 1 : i * step),
      ).reverse();
    }
  }
}
