/**
 * Imagic (Kawar et al., 2023): edit a real photo to match a target prompt.
 *  1. Embedding: from e_tgt = CLIP(prompt), optimize e (Adam) so the frozen UNet denoises the photo's
 *     latents well at random timesteps → e_opt.
 *  2. Fine-tune: with e_opt fixed, train LoRA adapters on the UNet's attention to reconstruct the photo
 *     even better.
 *  3. Render: DDIM with classifier-free guidance at ē = η·e_tgt + (1−η)·e_opt on the fine-tuned UNet,
 *     for several η and seeds; η = 0 reconstructs the photo, η = 1 follows the prompt, η > 1 pushes past it.
 *
 * Going beyond the reference pipeline (one timestep per step, 500 + 1000 steps): each step can draw
 * several timesteps (one batched loss and update: less gradient noise per step, better GPU use), and a
 * stage can stop early once the EMA of its loss is flat.
 */
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import {
  type EarlyStopOptions,
  type ImagicOptions,
  type RenderOptions,
  validateImagicOptions,
  validateRenderOptions,
} from "../../spec/imagic.js";
import type { Box, Size } from "../../spec/shape.js";
import { repeatBatch } from "../batch.js";
import { GaussianRng } from "../diffusion/rng.js";
import { throwIfCancelled } from "../errors.js";
import { f16ToF32, f32ToF16 } from "../graph/dtype.js";
import { type Tile, tileGrid } from "../grid.js";
import { cropImage } from "../image.js";
import type { StableDiffusion, UnetWeights } from "../index.js";
import { Adam } from "../optim/adam.js";
import { LossPlateau } from "../optim/plateau.js";
import { EtaTracker, type StagePlan } from "../progress.js";
import type { ImagicState } from "./imagic-state.js";
import { checkPrompt } from "./prompt.js";
import { sampleLatents } from "./sample.js";
import { SeededDraws, type TrainingDraws } from "./training.js";

const log = childLogger("imagic");

export type ImagicStage = "encode" | "embedding" | "finetune" | "render";

export interface Progress {
  stage: ImagicStage;
  step: number;
  total: number;
  loss?: number;
  /** Seconds left in this call (training: both stages; render: every batch). */
  etaSeconds?: number;
  /** [3, h, w] in [-1, 1] (h × w: the state's content box): while rendering, the first image of each batch as soon as it is decoded. */
  preview?: Float32Array;
}

export interface TrainArgs {
  /** The photo, [1, 3, height, width] in [-1, 1] (src/engine/image.ts's loadImage). */
  image: Float32Array;
  /** Its size in pixels, each a multiple of the VAE factor (8); renders run at this size. */
  height: number;
  width: number;
  /** Where the photo's pixels are in the image (the rest is padding, cropped off renders); default all. */
  content?: Box;
  /** The photo's own size before it was resized, kept in the state for upscaled results. */
  source?: Size;
  prompt: string;
  options: ImagicOptions;
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
  /**
   * Each step's timesteps and noise (default: seeded from options.seed). Lets a run replay another
   * implementation's draws for a parity check, or hold them fixed to watch the optimizer alone.
   */
  draws?: TrainingDraws;
}

export interface RenderArgs extends RenderOptions {
  /** Images per UNet call (each costs 2 batch items with guidance). */
  batch?: number;
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
  /**
   * A seed's initial latents, `count` values (default: GaussianRng(seed), the noise txt2img draws). Like
   * TrainArgs.draws, lets a check replay other draws (e.g. the same noise laid out transposed).
   */
  noise?: (seed: number, count: number) => Float32Array;
}

export interface RenderedImage {
  eta: number;
  seed: number;
  /** [3, height, width] in [-1, 1]: the photo's box of the rendered image (its aspect ratio). */
  image: Float32Array;
  height: number;
  width: number;
}

/** Relative cost of one step of each stage, for ETAs before a stage has been timed. */
const STEP_COST = { embedding: 1, finetune: 1.15 } as const;

function plateauFor(es: EarlyStopOptions | null, steps: number): LossPlateau | undefined {
  if (!es) return undefined;
  return new LossPlateau({
    beta: es.beta,
    patience: Math.max(1, Math.ceil(es.patience * steps)),
    minRelImprovement: es.minRelImprovement,
    minSteps: Math.ceil(es.minSteps * steps),
  });
}

/** Stages 1 and 2: returns the state a render needs. */
export async function trainImagic(sd: StableDiffusion, args: TrainArgs): Promise<ImagicState> {
  const o = validateImagicOptions(args.options);
  const prompt = checkPrompt(sd.tokenizer, args.prompt);
  const { height, width, signal } = args;
  const report = args.onProgress ?? (() => {});
  const size = sd.latentSize(height, width);
  const per = sd.latentChannels * size.height * size.width;
  if (args.image.length !== 3 * height * width) {
    throw new Error(`trainImagic: image holds ${args.image.length} values, expected 3×${height}×${width}`);
  }
  const full = o.finetune.method === "full";
  // A full fine-tune that cannot fit is refused before the photo is even encoded.
  if (full && o.finetune.steps > 0) {
    sd.checkTrainingMemory({
      names: sd.unetWeightNames(o.finetune.weights ?? "all"),
      batch: o.finetune.batch,
      ...size,
    });
  }
  const started = performance.now();
  throwIfCancelled(signal, "the start");
  report({ stage: "encode", step: 0, total: 1 });
  const eTgt = await sd.encodeText([prompt]);
  // The posterior mean, not a sample: the target is the photo itself, without the VAE's sampling noise.
  const { mean: x0 } = await sd.encodeImage(args.image, height, width);
  report({ stage: "encode", step: 1, total: 1 });
  const encodeSeconds = (performance.now() - started) / 1000;

  const plan: StagePlan[] = [
    { stage: "embedding", steps: o.embedding.steps, weight: STEP_COST.embedding * o.embedding.batch },
    { stage: "finetune", steps: o.finetune.steps, weight: STEP_COST.finetune * o.finetune.batch },
  ];
  const eta = new EtaTracker(plan);
  const draws = args.draws ?? new SeededDraws(o.seed, sd.scheduler().numTrainTimesteps);

  /** One stage's loop: draw a batch, get loss and gradients, step Adam, report, maybe stop early. */
  const run = async (
    stage: "embedding" | "finetune",
    steps: number,
    batch: number,
    stepFn: (noise: Float32Array, t: number[]) => Promise<number>,
  ): Promise<{ losses: number[]; seconds: number }> => {
    const t0 = performance.now();
    const losses: number[] = [];
    const plateau = plateauFor(o.earlyStop, steps);
    eta.begin(stage);
    for (let step = 1; step <= steps; step++) {
      throwIfCancelled(signal, `${stage} step ${step}/${steps}`);
      const loss = await stepFn(draws.noise(batch * per), draws.timesteps(batch));
      losses.push(loss);
      if (!Number.isFinite(loss)) throw new Error(`imagic ${stage}: the loss became ${loss} at step ${step}`);
      report({ stage, step, total: steps, loss, etaSeconds: eta.step(stage, step) });
      if (plateau?.update(loss)) {
        log.info({ stage, step, steps, ema: plateau.average }, "loss flat: stopping early");
        break;
      }
    }
    eta.finish(stage);
    return { losses, seconds: (performance.now() - t0) / 1000 };
  };

  // Stage 1 optimizes this text embedding (Adam on the host: 77 vectors); stage 2 then trains the UNet with
  // it fixed (Adam in the training graph, its state kept with the session: optim/trainer.ts).
  const eOpt = Float32Array.from(eTgt);

  // The LoRA adapter, created before stage 1: when stage 2 trains it at stage 1's batch, both stages run
  // one compiled graph (gradients w.r.t. the context and the adapter), so the device holds one training
  // session instead of two; stage 1 holds the adapter as it is. It starts as peft does (B = 0): during
  // stage 1 it adds exactly nothing. With trainingSessions "per-stage" each stage has a graph of its own
  // gradients only: onnxruntime runs every node of a graph whatever is fetched, so the shared graph's
  // stage 1 also computes the adapter's gradients (on the H200: 175–184 ms per step instead of 129;
  // docs/PERFORMANCE.md, "CUDA graphs").
  const adapter =
    o.finetune.steps > 0 && !full ? sd.newLora(o.finetune.loraRank, o.finetune.loraAlpha, o.seed) : null;
  const shared =
    adapter && o.finetune.batch === o.embedding.batch && sd.trainingSessions === "shared"
      ? await sd.trainer({
          lora: adapter,
          wrtContext: true,
          batch: o.finetune.batch,
          size,
          adam: { lr: o.finetune.lr },
        })
      : null;

  // Stage 1: the text embedding.
  const embeddingAdam = new Adam([eOpt], { lr: o.embedding.lr });
  const latentsE = repeatBatch(x0, o.embedding.batch);
  const embedding = await run("embedding", o.embedding.steps, o.embedding.batch, async (noise, t) => {
    const step = { latents0: latentsE, size, noise, t, context: eOpt };
    const r = shared
      ? await shared.step({ ...step, hold: true })
      : await sd.lossAndGrads({ ...step, wrt: ["context"] });
    if (!r.dContext) throw new Error("imagic: the engine returned no context gradient");
    embeddingAdam.step([r.dContext]);
    return r.loss;
  });

  // Stage 2: LoRA on the UNet (or its own weights), with e_opt fixed.
  const weights = full && o.finetune.steps > 0 ? sd.unetWeights(o.finetune.weights ?? "all") : null;
  const trained = { batch: o.finetune.batch, size, adam: { lr: o.finetune.lr } };
  const trainer =
    shared ??
    (weights
      ? await sd.trainer({ unet: weights, ...trained })
      : adapter
        ? await sd.trainer({ lora: adapter, ...trained })
        : null);
  let finetune = { losses: [] as number[], seconds: 0 };
  if (trainer) {
    const latentsF = repeatBatch(x0, o.finetune.batch);
    finetune = await run("finetune", o.finetune.steps, o.finetune.batch, async (noise, t) => {
      const r = await trainer.step({ latents0: latentsF, noise, t, context: eOpt });
      return r.loss;
    });
    await trainer.finish();
  }
  const unetDelta = weights ? changedDelta(sd, weights) : null;
  log.info(
    {
      encodeSeconds,
      embedding: { steps: embedding.losses.length, seconds: embedding.seconds },
      finetune: { steps: finetune.losses.length, seconds: finetune.seconds },
    },
    "imagic trained",
  );
  return {
    modelId: sd.modelId,
    prompt,
    width,
    height,
    content: args.content ?? { left: 0, top: 0, width, height },
    ...(args.source ? { source: { width: args.source.width, height: args.source.height } } : {}),
    options: o,
    contextShape: [...sd.contextShape],
    eTgt,
    eOpt,
    lora: adapter,
    ...(unetDelta ? { unetDelta } : {}),
    losses: { embedding: embedding.losses, finetune: finetune.losses },
    seconds: { encode: encodeSeconds, embedding: embedding.seconds, finetune: finetune.seconds },
  };
}

/**
 * What a full fine-tune changed: trained − checkpoint per tensor, rounded to fp16 (the state stores it
 * so, and holding the rounded values here makes a render from this state and from its serialized copy
 * identical), keeping only tensors with a non-zero change.
 */
function changedDelta(sd: StableDiffusion, trained: UnetWeights): UnetWeights {
  const out: UnetWeights = new Map();
  for (const [name, w] of trained) {
    // One checkpoint tensor at a time: a full SD 1.5 UNet is 3.4 GB in fp32 already held once.
    const b = sd.unetWeights((n) => n === name).get(name) as Float32Array;
    const d = new Float32Array(w.length);
    for (let i = 0; i < w.length; i++) d[i] = (w[i] as number) - (b[i] as number);
    const rounded = f16ToF32(f32ToF16(d));
    if (rounded.some((v) => v !== 0)) out.set(name, rounded);
  }
  return out;
}

/** The fine-tuned UNet weights a state's delta stands for: the checkpoint's plus the delta. */
function fineTunedWeights(sd: StableDiffusion, delta: UnetWeights): UnetWeights {
  const weights = sd.unetWeights((n) => delta.has(n));
  if (weights.size !== delta.size) {
    const missing = [...delta.keys()].find((n) => !weights.has(n));
    throw new UserFacingError(
      `this Imagic state changes UNet weight ${missing}, which the model does not have`,
    );
  }
  for (const [name, w] of weights) {
    const d = delta.get(name) as Float32Array;
    if (d.length !== w.length) {
      throw new UserFacingError(
        `this Imagic state's delta for ${name} holds ${d.length} values; the model's weight holds ${w.length}`,
      );
    }
    for (let i = 0; i < w.length; i++) w[i] = (w[i] as number) + (d[i] as number);
  }
  return weights;
}

/** ē = η·e_tgt + (1−η)·e_opt */
export function interpolate(state: Pick<ImagicState, "eTgt" | "eOpt">, eta: number): Float32Array {
  const out = new Float32Array(state.eTgt.length);
  for (let i = 0; i < out.length; i++) {
    out[i] = eta * (state.eTgt[i] as number) + (1 - eta) * (state.eOpt[i] as number);
  }
  return out;
}

/** Stage 3: every η × seed (η-major), `batch` images per UNet call. */
export async function renderImagic(
  sd: StableDiffusion,
  state: ImagicState,
  args: RenderArgs,
): Promise<RenderedImage[]> {
  const r = validateRenderOptions({
    etas: args.etas,
    seeds: args.seeds,
    guidance: args.guidance,
    steps: args.steps,
  });
  if (state.modelId !== sd.modelId || state.contextShape[1] !== sd.contextShape[1]) {
    throw new UserFacingError(
      `this Imagic state was trained on model "${state.modelId}"; the engine runs "${sd.modelId}": train again on this model`,
    );
  }
  const batch = Math.max(1, Math.floor(args.batch ?? 4));
  const { height, width } = state;
  const size = sd.latentSize(height, width);
  const per = sd.latentChannels * size.height * size.width;
  const ctxSize = state.eTgt.length;
  // A repeated η or seed is rendered once (as chat's seed lists drop repeats): a copy would cost a render
  // and break the grids' one row per η and one column per seed.
  const pairs = [...new Set(r.etas)].flatMap((eta) => [...new Set(r.seeds)].map((seed) => ({ eta, seed })));
  const chunks: Array<typeof pairs> = [];
  for (let i = 0; i < pairs.length; i += batch) chunks.push(pairs.slice(i, i + batch));
  // A short last batch is padded with copies of its last image (dropped afterwards), so every call of a
  // multi-batch render has one shape: one compiled UNet session (and its weights) instead of two.
  const last = chunks.at(-1) as typeof pairs;
  const realInLast = last.length;
  if (chunks.length > 1)
    while (last.length < batch) last.push(last[realInLast - 1] as (typeof pairs)[number]);
  const total = chunks.length * r.steps;
  const eta = new EtaTracker([{ stage: "render", steps: total, weight: 1 }]);
  const report = args.onProgress ?? (() => {});
  const uncond = await sd.encodeText([""]);
  const out: RenderedImage[] = [];
  const contexts = new Map(r.etas.map((e) => [e, interpolate(state, e)]));
  const unet = state.unetDelta ? fineTunedWeights(sd, state.unetDelta) : undefined;
  let etaSeconds: number | undefined;
  eta.begin("render");
  for (const [c, chunk] of chunks.entries()) {
    const latents = new Float32Array(chunk.length * per);
    const ctx = new Float32Array(chunk.length * ctxSize);
    chunk.forEach((p, i) => {
      // The same initial noise as txt2img draws for this seed.
      latents.set(args.noise?.(p.seed, per) ?? new GaussianRng(p.seed).normal(per), i * per);
      ctx.set(contexts.get(p.eta) as Float32Array, i * ctxSize);
    });
    const final = await sampleLatents(sd, {
      latents,
      size,
      contexts: ctx,
      uncond,
      guidance: r.guidance,
      steps: r.steps,
      lora: state.lora ?? undefined,
      unet,
      signal: args.signal,
      label: `render batch ${c + 1}/${chunks.length}`,
      onStep: (step) => {
        const done = c * r.steps + step;
        etaSeconds = eta.step("render", done);
        report({ stage: "render", step: done, total, etaSeconds });
      },
    });
    throwIfCancelled(args.signal, `render batch ${c + 1}/${chunks.length} decode`);
    const images = await sd.decodeLatents(final, size);
    const img = 3 * height * width;
    const real = c === chunks.length - 1 ? realInLast : chunk.length;
    const box = state.content;
    chunk.slice(0, real).forEach((p, i) => {
      const image = cropImage(images.slice(i * img, (i + 1) * img), state, box);
      out.push({ ...p, image, height: box.height, width: box.width });
    });
    // The batch's first finished image, free to show while later batches render.
    report({ stage: "render", step: (c + 1) * r.steps, total, etaSeconds, preview: out.at(-real)?.image });
  }
  return out;
}

/** N seeds at one η, labelled 1…N (the numbers a chat user reacts with). */
export function seedGrid(images: readonly RenderedImage[], eta: number): Promise<Buffer> {
  const row = images.filter((i) => i.eta === eta);
  if (row.length === 0) throw new Error(`seedGrid: no image at η ${eta}`);
  return tileGrid(
    row.map((i, k) => tile(i, String(k + 1))),
    { columns: Math.min(4, row.length) },
  );
}

/** One seed across every η, weak to strong, labelled with η. */
export function etaSweep(images: readonly RenderedImage[], seed: number): Promise<Buffer> {
  const col = images.filter((i) => i.seed === seed).sort((a, b) => a.eta - b.eta);
  if (col.length === 0) throw new Error(`etaSweep: no image for seed ${seed}`);
  return tileGrid(
    col.map((i) => tile(i, `η ${i.eta}`)),
    { columns: col.length },
  );
}

/** Every image: one row per η, one column per seed, labelled "seed · η". */
export function fullGrid(images: readonly RenderedImage[]): Promise<Buffer> {
  const seeds = new Set(images.map((i) => i.seed)).size;
  return tileGrid(
    images.map((i) => tile(i, `${i.seed} · η ${i.eta}`)),
    { columns: seeds },
  );
}

function tile(i: RenderedImage, label: string): Tile {
  return { image: i.image, width: i.width, height: i.height, label };
}
