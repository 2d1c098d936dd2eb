/**
 * Inverting a real photo for Photoswap (../shared/PHOTOSWAP.md §9): the source branch of the swap must
 * reconstruct the photo from the inverted noise, under classifier-free guidance.
 *
 * - **null-text** (the official code: P2P's NullInversion): DDIM inversion conditioned on the source
 *   prompt (conditional ε only), then per sampling step an Adam optimization of the unconditional
 *   context so that the guided step lands on the inversion's latent. N × up to `innerSteps` UNet
 *   forward + backward passes.
 * - **direct** (PnP / "direct inversion", Ju et al. 2023): the same DDIM inversion, nothing optimized;
 *   the sampler moves the source branch onto the inversion trajectory after every step, so the source
 *   reconstructs the photo exactly and the target reads its attention from that path. N UNet forward
 *   passes: 10–50× cheaper than null-text.
 */
import { relativeDistance } from "../distance.js";
import { throwIfCancelled } from "../errors.js";
import type { LatentSize, StableDiffusion } from "../index.js";
import { IO } from "../models/components.js";
import { NULL_TEXT_IO, nullTextLossGraph } from "../models/null-text.js";
import { Adam } from "../optim/adam.js";
import { EtaTracker } from "../progress.js";
import type { HostTensor, Session } from "../runtime/index.js";
import { ddimInvert } from "./invert.js";
import type { InversionMethod, InvertedSource } from "./photoswap-types.js";
import { cfg, sampleLatents } from "./sample.js";

export interface InversionProgress {
  stage: "invert" | "null-text";
  step: number;
  total: number;
  /** null-text: the last inner step's loss (before its update). */
  loss?: number;
  etaSeconds?: number;
}

export interface InvertArgs {
  /** Latent height and width. */
  size: LatentSize;
  /** The encoded photo [1, 4, h, w], scaled (`encodeImage`'s mean). */
  latents0: Float32Array;
  /** The source prompt ("a photo of a cat"): the inversion's condition and the source branch's. */
  prompt: string;
  /** DDIM steps (the swap samples with the same). */
  steps: number;
  /** Classifier-free guidance of the swap's sampling (official: 7.5). */
  guidance: number;
  signal?: AbortSignal;
  onProgress?: (p: InversionProgress) => void;
}

export interface NullTextOptions {
  /** Adam steps per sampling step at most (official: 10). */
  innerSteps?: number;
  /** The inner loop stops once the loss is below epsilon + i·2e-5 at sampling step i (official: 1e-5). */
  earlyStopEpsilon?: number;
}

export interface NullTextResult {
  source: InvertedSource;
  /** z_0 … z_N of the DDIM inversion. */
  ddimLatents: Float32Array[];
  /** The inner loop's losses per sampling step, each computed before that inner step's update. */
  losses: number[][];
}

/** The null-text learning rate at sampling step i (the official 1e-2·(1 − i/100), 100 hard-coded). */
export function nullTextLr(step: number): number {
  return 1e-2 * (1 - step / 100);
}

/** The DDIM inversion trajectory z_0 … z_N (z_0 = the photo's latents), conditioned on `context`. */
async function trajectory(
  sd: StableDiffusion,
  a: InvertArgs,
  context: Float32Array,
  report: (p: InversionProgress) => void,
): Promise<Float32Array[]> {
  const { latents } = await ddimInvert(sd, {
    latents: a.latents0,
    size: a.size,
    context,
    steps: a.steps,
    signal: a.signal,
    onStep: (step, total) => report({ stage: "invert", step, total }),
  });
  return [a.latents0, ...latents];
}

function checkArgs(sd: StableDiffusion, a: InvertArgs): void {
  const { height, width } = a.size;
  if (a.latents0.length !== sd.latentChannels * height * width) {
    throw new Error(`inversion: latents hold ${a.latents0.length} values, expected 4×${height}×${width}`);
  }
  if (!Number.isInteger(a.steps) || a.steps < 1) throw new Error(`inversion: ${a.steps} DDIM steps`);
}

/** Direct inversion: the DDIM trajectory, kept for the sampler to follow. */
export async function invertDirect(sd: StableDiffusion, a: InvertArgs): Promise<InvertedSource> {
  checkArgs(sd, a);
  const cond = await sd.encodeText([a.prompt]);
  const path = await trajectory(sd, a, cond, a.onProgress ?? (() => {}));
  return source(a, "direct", path, { trajectory: path });
}

function source(
  a: InvertArgs,
  method: InversionMethod,
  path: Float32Array[],
  extra: Pick<InvertedSource, "trajectory" | "nullEmbeddings">,
): InvertedSource {
  return {
    method,
    latents0: a.latents0,
    height: a.size.height,
    width: a.size.width,
    steps: a.steps,
    guidance: a.guidance,
    xT: path[path.length - 1] as Float32Array,
    prompt: a.prompt,
    ...extra,
  };
}

/** float32 as torch holds a 0-dim tensor's result. */
const f32 = Math.fround;

/**
 * The per-sampling-step part of null-text inversion: for step i at x_i, Adam on the unconditional
 * context u (warm-started: updated in place) against the trajectory's z_{N−1−i}, then the guided step to
 * x_{i+1} with the optimized u.
 */
export class NullTextOptimizer {
  private constructor(
    private readonly sd: StableDiffusion,
    private readonly session: Session,
    private readonly o: Required<NullTextOptions> & { size: LatentSize; steps: number; guidance: number },
    /** The source prompt's context [1, 77, D]. */
    readonly cond: Float32Array,
  ) {}

  static async create(
    sd: StableDiffusion,
    o: NullTextOptions & { size: LatentSize; steps: number; guidance: number; cond: Float32Array },
  ): Promise<NullTextOptimizer> {
    const { height, width } = o.size;
    const { session } = await sd.compile(`null-text:${height}x${width}`, ({ checkpoint, trainDtype }) => ({
      graph: nullTextLossGraph(checkpoint.unet.weights, checkpoint.unet.config, {
        height,
        width,
        prediction: sd.predictionType,
        dtype: trainDtype,
      }),
    }));
    const settings = {
      size: o.size,
      steps: o.steps,
      guidance: o.guidance,
      innerSteps: o.innerSteps ?? 10,
      earlyStopEpsilon: o.earlyStopEpsilon ?? 1e-5,
    };
    return new NullTextOptimizer(sd, session, settings, o.cond);
  }

  /**
   * The loss at sampling step i from x (at timesteps[i]) towards `target` (z_{N−1−i}), as a function of
   * the unconditional context u: returns it and its gradient. ε_c = UNet(x, t, cond) is computed once,
   * without gradients, when the function is made (as the official code does per sampling step).
   */
  async lossAt(
    i: number,
    x: Float32Array,
    target: Float32Array,
  ): Promise<(u: Float32Array) => Promise<{ loss: number; grad: Float32Array }>> {
    const { sd, o } = this;
    const { size } = o;
    const shape = [1, sd.latentChannels, size.height, size.width];
    const { t, aT, aPrev } = this.timestep(i);
    const scalar = (v: number): HostTensor => ({ dtype: "float32", shape: [1], data: Float32Array.of(v) });
    const latent = (data: Float32Array): HostTensor => ({ dtype: "float32", shape, data });
    const condOut = await sd.predictNoise(x, size, t, this.cond);
    const feeds: Record<string, HostTensor> = {
      [IO.sample]: latent(x),
      [IO.timestep]: scalar(t),
      [NULL_TEXT_IO.condOut]: latent(condOut),
      [NULL_TEXT_IO.target]: latent(target),
      [NULL_TEXT_IO.guidance]: scalar(o.guidance),
      // The coefficients as torch computes them on float32 0-dim tensors.
      [NULL_TEXT_IO.sqrtAlpha]: scalar(f32(Math.sqrt(aT))),
      [NULL_TEXT_IO.sqrtOneMinusAlpha]: scalar(f32(Math.sqrt(f32(1 - aT)))),
      [NULL_TEXT_IO.sqrtAlphaPrev]: scalar(f32(Math.sqrt(aPrev))),
      [NULL_TEXT_IO.sqrtOneMinusAlphaPrev]: scalar(f32(Math.sqrt(f32(1 - aPrev)))),
    };
    return async (u) => {
      const out = await this.session.run({
        ...feeds,
        [NULL_TEXT_IO.uncond]: { dtype: "float32", shape: [1, 77, sd.contextShape[1]], data: u },
      });
      return { loss: output(out, NULL_TEXT_IO.loss)[0] as number, grad: output(out, NULL_TEXT_IO.dUncond) };
    };
  }

  /**
   * Sampling step i from x towards `target` (z_{N−1−i}): optimizes `u` in place with a fresh Adam at
   * this step's rate and returns the inner losses (each before its update) and x_{i+1}.
   */
  async step(
    i: number,
    x: Float32Array,
    u: Float32Array,
    target: Float32Array,
    signal?: AbortSignal,
  ): Promise<{ losses: number[]; next: Float32Array }> {
    const { sd, o } = this;
    const lossOf = await this.lossAt(i, x, target);
    const adam = new Adam([u], { lr: nullTextLr(i) });
    const losses: number[] = [];
    for (let j = 0; j < o.innerSteps; j++) {
      throwIfCancelled(signal, `null-text step ${i + 1}/${o.steps}, inner step ${j + 1}/${o.innerSteps}`);
      const { loss, grad } = await lossOf(u);
      adam.step([grad]);
      losses.push(loss);
      // The official loop tests the loss it computed before this update, after the update.
      if (loss < o.earlyStopEpsilon + i * 2e-5) break;
    }
    // Advance along the sampling path with the optimized context, in one [u_i; cond] guided batch.
    const { t, scheduler } = this.timestep(i);
    const both = new Float32Array(2 * u.length);
    both.set(u);
    both.set(this.cond, u.length);
    const input = new Float32Array(2 * x.length);
    input.set(x);
    input.set(x, x.length);
    const out = await sd.predictNoise(input, o.size, t, both);
    return { losses, next: scheduler.step(cfg(out, x.length, o.guidance), t, x) };
  }

  /** Sampling step i's timestep and ᾱ at it and at the timestep it steps to. */
  private timestep(i: number) {
    const scheduler = this.sd.scheduler();
    scheduler.setTimesteps(this.o.steps);
    const t = scheduler.timesteps[i];
    if (t === undefined) throw new Error(`null-text: step ${i} of ${this.o.steps}`);
    const prev = scheduler.prevTimestep(t);
    const aT = scheduler.alphasCumprod[t] as number;
    const aPrev = prev >= 0 ? (scheduler.alphasCumprod[prev] as number) : scheduler.finalAlphaCumprod;
    return { scheduler, t, aT, aPrev };
  }
}

function output(out: Record<string, HostTensor>, name: string): Float32Array {
  const t = out[name];
  if (!(t?.data instanceof Float32Array))
    throw new Error(`null-text loss graph: no float32 output "${name}"`);
  return t.data;
}

/** Null-text inversion exactly as the official code (PHOTOSWAP.md §9). */
export async function invertNullText(
  sd: StableDiffusion,
  a: InvertArgs & NullTextOptions,
): Promise<NullTextResult> {
  checkArgs(sd, a);
  const report = a.onProgress ?? (() => {});
  const ctx = await sd.encodeText(["", a.prompt]);
  const ctxSize = ctx.length / 2;
  const cond = ctx.slice(ctxSize);
  const optimizer = await NullTextOptimizer.create(sd, { ...a, cond });
  const eta = new EtaTracker([
    { stage: "invert", steps: a.steps, weight: 1 },
    // Per step: ε_c, up to innerSteps forward + backward passes (≈ 3 forwards each), a batch-2 forward.
    { stage: "null-text", steps: a.steps, weight: 3 * (a.innerSteps ?? 10) + 3 },
  ]);
  eta.begin("invert");
  const path = await trajectory(sd, a, cond, (p) => report({ ...p, etaSeconds: eta.step("invert", p.step) }));
  // u starts as encode("") and carries over from step to step (a warm start).
  const u = ctx.slice(0, ctxSize);
  const embeddings: Float32Array[] = [];
  const losses: number[][] = [];
  let x = path[a.steps] as Float32Array;
  eta.begin("null-text");
  for (let i = 0; i < a.steps; i++) {
    const r = await optimizer.step(i, x, u, path[a.steps - 1 - i] as Float32Array, a.signal);
    embeddings.push(u.slice());
    losses.push(r.losses);
    x = r.next;
    report({
      stage: "null-text",
      step: i + 1,
      total: a.steps,
      loss: r.losses.at(-1),
      etaSeconds: eta.step("null-text", i + 1),
    });
  }
  return {
    source: source(a, "null-text", path, { nullEmbeddings: embeddings }),
    ddimLatents: path,
    losses,
  };
}

export interface Reconstruction {
  /** The source branch's final latents [1, 4, h, w]. */
  latents: Float32Array;
  /**
   * direct: per sampling step, ‖guided step − the trajectory point it is moved onto‖ / ‖that point‖
   * (what the correction removes); null-text: empty.
   */
  corrections: number[];
}

/**
 * The source branch alone (what the swap's row 0 computes): guided DDIM from x_T with the source prompt,
 * under the null-text embeddings, or moved onto the trajectory after every step (direct).
 */
export async function reconstructSource(
  sd: StableDiffusion,
  s: InvertedSource,
  o: { signal?: AbortSignal; onStep?: (step: number, total: number) => void } = {},
): Promise<Reconstruction> {
  const cond = await sd.encodeText([s.prompt]);
  const corrections: number[] = [];
  const path = s.trajectory;
  const latents = await sampleLatents(sd, {
    latents: s.xT,
    size: { height: s.height, width: s.width },
    contexts: cond,
    uncond: s.nullEmbeddings ?? (await sd.encodeText([""])),
    guidance: s.guidance,
    steps: s.steps,
    signal: o.signal,
    onStep: o.onStep,
    label: "reconstruction",
    ...(path
      ? {
          correct: (i: number, x: Float32Array) => {
            const target = path[s.steps - 1 - i] as Float32Array;
            corrections.push(relativeDistance(x, target));
            return target;
          },
        }
      : {}),
  });
  return { latents, corrections };
}

/** PSNR in dB of two images in [-1, 1] (clamped first, as images are rendered), peak-to-peak 2. */
export function psnr(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`psnr: ${a.length} vs ${b.length} values`);
  const clamp = (v: number) => Math.min(1, Math.max(-1, v));
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (clamp(a[i] as number) - clamp(b[i] as number)) ** 2;
  const mse = se / a.length;
  return mse === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(4 / mse);
}
