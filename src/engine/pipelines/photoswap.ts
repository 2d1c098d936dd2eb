/**
 * Photoswap's joint sampler (eric-ai-lab/photoswap, ../shared/PHOTOSWAP.md): the source prompt and K
 * target variants sampled together, one UNet call per step over the batch
 * [uncond_src, uncond_tgt_1…K, cond_src, cond_tgt_1…K], with the attention swaps φ / M / A switched per
 * target row and step (models/attention-control.ts), classifier-free guidance per prompt, one DDIM step,
 * then the local blend (photoswap-blend.ts). Nothing touches the source rows, so the source branch is
 * plain sampling of the source prompt: the inversion's reconstruction.
 */
import { createHash } from "node:crypto";
import { UserFacingError } from "../../errors.js";
import { checkSubjectInPrompt, SWAP_BATCH, type SwapStrengths } from "../../spec/swap.js";
import { GaussianRng } from "../diffusion/rng.js";
import { throwIfCancelled } from "../errors.js";
import type { LatentSize, StableDiffusion } from "../index.js";
import { SWAP_IO, SwapControl } from "../models/attention-control.js";
import { IO, unetGraph } from "../models/components.js";
import { concatLora, type LoraInputs, type LoraWeights } from "../models/lora.js";
import type { Session } from "../runtime/index.js";
import { type BlendMasks, LocalBlend } from "./photoswap-blend.js";
import {
  alignTokens,
  type PromptTokenizer,
  promptTokens,
  type TokenMapper,
  wordIndices,
} from "./photoswap-tokens.js";
import type { ConceptAdapter, InvertedSource } from "./photoswap-types.js";
import { cfg } from "./sample.js";

/** The sampling steps (0-based, from the noisiest) in which each swap acts: step i < the count. */
export interface SwapWindows {
  /** φ: the target's self-attention takes the source's q, k, v (both guidance halves, every layer). */
  phiSteps: number;
  /** M: the target's self-attention map is the source's (conditional half, layers ≤ the token limit). */
  selfMapSteps: number;
  /** A: the target's cross-attention maps of tokens it shares with the source are the source's. */
  crossSteps: number;
}

/** The official code's fractions (AttentionSwap's arguments). */
export interface SwapFractions {
  crossMapReplaceSteps: number;
  selfOutputReplaceSteps: number;
  selfMapReplaceSteps: number;
}

/**
 * The official integer windows of §7 for `steps` sampling steps: A for i < int(fA·(N+1)); φ for
 * i ≤ int(fφ·phiOutOf) (the code hard-codes phiOutOf = 50; the golden fixtures use N); M for
 * i < int(N·(fM + fφ)). Python's int() truncates, as Math.trunc does on the same doubles.
 */
export function officialWindows(f: SwapFractions, steps: number, phiOutOf = 50): SwapWindows {
  return {
    crossSteps: Math.trunc(f.crossMapReplaceSteps * (steps + 1)),
    phiSteps: Math.trunc(f.selfOutputReplaceSteps * phiOutOf) + 1,
    selfMapSteps: Math.trunc(steps * (f.selfMapReplaceSteps + f.selfOutputReplaceSteps)),
  };
}

/** The local blend's first step: the official LocalBlend blends after step i when i + 1 > int(0.2·N). */
export function officialBlendFrom(steps: number, startBlend = 0.2): number {
  return Math.trunc(startBlend * steps);
}

export interface BlendSettings {
  /** Per subject: the source prompt's token positions of its word. */
  sourceWords: readonly (readonly number[])[];
  /** Per subject: the target prompt's token positions of its word (the official code: the concept token). */
  targetWords: readonly (readonly number[])[];
  /** Official: 0.3. */
  threshold: number;
  /** Blend after step i for i ≥ this (officialBlendFrom). */
  from: number;
}

export interface JointSampleOptions {
  size: LatentSize;
  steps: number;
  guidance: number;
  /** The source branch's start [1, 4, h, w]. */
  xT: Float32Array;
  /** The target variants: each its start latents [1, 4, h, w] and its windows. */
  targets: ReadonlyArray<{ xT: Float32Array; windows: SwapWindows }>;
  /** [1, 77, D] each. */
  sourceContext: Float32Array;
  targetContext: Float32Array;
  /** The unconditional context of both prompts: one for every step, or one per step (null-text inversion). */
  uncond: Float32Array | readonly Float32Array[];
  mapper: TokenMapper;
  /** The local blend; absent: none (the official code always blends). */
  blend?: BlendSettings;
  /** Direct inversion's z_0 … z_N: the source branch is moved onto z_{N−1−i} after step i. */
  trajectory?: readonly Float32Array[];
  /** A concept's LoRA, acting on the target rows only. */
  lora?: LoraWeights;
  /** Keep the latents after every step (tests, reports). */
  keepTrajectory?: boolean;
  /** After each step; `preview` gives the first target's estimate of x₀ at that step (for previews). */
  onStep?: (step: number, total: number, preview: () => Float32Array) => void;
  signal?: AbortSignal;
}

export interface JointSampleResult {
  source: Float32Array;
  targets: Float32Array[];
  /** With keepTrajectory: [source, targets…] at the start and after each step (steps + 1 entries). */
  trajectory?: Float32Array[][];
  /** The masks of each blended step, in order. */
  masks: BlendMasks[];
}

interface SwapSession {
  session: Session;
  control: SwapControl;
  lora: LoraInputs | undefined;
}

export interface SwapGraphOptions {
  targets: number;
  size: LatentSize;
  subjects: number;
  loraRank?: number;
  /** Modules whose outputs the graph exposes as `probe.<path>` (per-layer parity checks). */
  probes?: readonly string[];
}

/** The controlled UNet for this batch layout, compiled once per layout through the facade's cache. */
export function swapSession(sd: StableDiffusion, o: SwapGraphOptions): Promise<SwapSession> {
  const probes = o.probes ?? [];
  const key = [
    "photoswap",
    `k${o.targets}`,
    `${o.size.height}x${o.size.width}`,
    `s${o.subjects}`,
    `r${o.loraRank ?? 0}`,
    ...(probes.length
      ? [`p${createHash("sha256").update(probes.join(",")).digest("hex").slice(0, 12)}`]
      : []),
  ].join(":");
  return sd.compile(key, ({ checkpoint, unetDtype }) => {
    const config = checkpoint.unet.config;
    const control = new SwapControl(config, {
      targets: o.targets,
      size: o.size,
      subjects: o.subjects,
      probes: (path) => probes.includes(path),
    });
    const { graph, lora } = unetGraph(checkpoint.unet.weights, config, {
      batch: control.batch,
      height: o.size.height,
      width: o.size.width,
      dtype: unetDtype,
      loraRank: o.loraRank,
      loraPerRow: true,
      control,
    });
    control.finish(graph);
    return { graph, control, lora };
  });
}

/** The per-step inputs of the controlled UNet (everything but latents, timestep and context). */
export function swapFeeds(
  control: SwapControl,
  step: number,
  windows: readonly SwapWindows[],
  mapper: TokenMapper,
  blend?: BlendSettings,
): Record<
  string,
  { dtype: "bool" | "int64" | "float32"; shape: number[]; data: Uint8Array | BigInt64Array | Float32Array }
> {
  const k = windows.length;
  const b = control.batch;
  const phi = new Uint8Array(b);
  const selfMap = new Uint8Array(b);
  const gate = new Uint8Array(b * 77);
  windows.forEach((w, i) => {
    const uncondRow = 1 + i;
    const condRow = k + 2 + i;
    const p = step < w.phiSteps ? 1 : 0;
    phi[uncondRow] = p;
    phi[condRow] = p;
    selfMap[uncondRow] = p;
    selfMap[condRow] = p || (step < w.selfMapSteps ? 1 : 0);
    if (step < w.crossSteps) for (let j = 0; j < 77; j++) gate[condRow * 77 + j] = mapper.alphas[j] ? 1 : 0;
  });
  // An unaligned slot (−1) is never gated on; pointing it at itself keeps every index in range.
  const mapperIds = BigInt64Array.from(mapper.mapper, (s, j) => BigInt(s < 0 ? j : s));
  const feeds: ReturnType<typeof swapFeeds> = {
    [SWAP_IO.phi]: { dtype: "bool", shape: [b], data: phi },
    [SWAP_IO.selfMap]: { dtype: "bool", shape: [b], data: selfMap },
    [SWAP_IO.crossGate]: { dtype: "bool", shape: [b, 77], data: gate },
    [SWAP_IO.crossMapper]: { dtype: "int64", shape: [77], data: mapperIds },
  };
  if (blend) {
    const s = blend.sourceWords.length;
    const words = new Float32Array((k + 1) * s * 77);
    for (let r = 0; r <= k; r++) {
      const sets = r === 0 ? blend.sourceWords : blend.targetWords;
      sets.forEach((positions, subject) => {
        for (const p of positions) words[(r * s + subject) * 77 + p] = 1;
      });
    }
    feeds[SWAP_IO.blendWords] = { dtype: "float32", shape: [k + 1, s, 77], data: words };
  }
  return feeds;
}

/** Samples the source and the K targets jointly (see the file comment). */
export async function jointSample(sd: StableDiffusion, o: JointSampleOptions): Promise<JointSampleResult> {
  const k = o.targets.length;
  const { height, width } = o.size;
  const per = sd.latentChannels * height * width;
  const ctx = 77 * sd.contextShape[1];
  const check = (what: string, x: Float32Array, n: number) => {
    if (x.length !== n) throw new Error(`photoswap: ${what} holds ${x.length} values, expected ${n}`);
  };
  check("xT", o.xT, per);
  for (const [i, t] of o.targets.entries()) check(`target ${i + 1}'s xT`, t.xT, per);
  check("sourceContext", o.sourceContext, ctx);
  check("targetContext", o.targetContext, ctx);
  const unconds = Array.isArray(o.uncond) ? (o.uncond as readonly Float32Array[]) : undefined;
  if (unconds && unconds.length !== o.steps)
    throw new Error(`photoswap: ${unconds.length} unconditional contexts for ${o.steps} steps`);
  if (o.trajectory && o.trajectory.length !== o.steps + 1)
    throw new Error(
      `photoswap: an inversion trajectory of ${o.trajectory.length} latents for ${o.steps} steps`,
    );
  if (o.blend && o.blend.sourceWords.length !== o.blend.targetWords.length)
    throw new Error("photoswap: the blend needs as many source as target word sets");

  const subjects = o.blend?.sourceWords.length ?? 0;
  const rank = o.lora ? (o.lora.values().next().value?.rank ?? 0) : 0;
  const { session, control, lora } = await swapSession(sd, {
    targets: k,
    size: o.size,
    subjects,
    loraRank: rank || undefined,
  });
  const b = control.batch;
  const blend = o.blend
    ? new LocalBlend({
        targets: k,
        subjects,
        groups: control.blendGroups,
        latent: o.size,
        threshold: o.blend.threshold,
      })
    : undefined;
  // The rows the concept's LoRA acts on: the targets, in both halves.
  const loraFeeds =
    o.lora && lora
      ? lora.feeds(
          o.lora,
          Array.from({ length: b }, (_, r) => (r % (k + 1) === 0 ? 0 : 1)),
        )
      : {};

  const context = new Float32Array(b * ctx);
  context.set(o.sourceContext, (k + 1) * ctx);
  for (let i = 0; i < k; i++) context.set(o.targetContext, (k + 2 + i) * ctx);
  const scheduler = sd.scheduler();
  scheduler.setTimesteps(o.steps);
  const timesteps = scheduler.timesteps;
  let source = o.xT.slice();
  let targets = o.targets.map((t) => t.xT.slice());
  const trajectory = o.keepTrajectory ? [[source, ...targets]] : undefined;
  const masks: BlendMasks[] = [];
  const windows = o.targets.map((t) => t.windows);
  for (let i = 0; i < timesteps.length; i++) {
    throwIfCancelled(o.signal, `Photoswap step ${i + 1}/${timesteps.length}`);
    const t = timesteps[i] as number;
    const uncond = unconds ? (unconds[i] as Float32Array) : (o.uncond as Float32Array);
    check(`the unconditional context of step ${i}`, uncond, ctx);
    for (let r = 0; r <= k; r++) context.set(uncond, r * ctx);
    const latents = new Float32Array(b * per);
    for (const half of [0, k + 1]) {
      latents.set(source, half * per);
      for (const [j, x] of targets.entries()) latents.set(x, (half + 1 + j) * per);
    }
    const out = await session.run({
      [IO.sample]: { dtype: "float32", shape: [b, sd.latentChannels, height, width], data: latents },
      [IO.timestep]: { dtype: "float32", shape: [b], data: new Float32Array(b).fill(t) },
      [IO.context]: { dtype: "float32", shape: [b, 77, sd.contextShape[1]], data: context },
      ...swapFeeds(control, i, windows, o.mapper, o.blend),
      ...loraFeeds,
    });
    // Classifier-free guidance per prompt: [uncond rows; cond rows] → K+1 guided outputs.
    const half = (k + 1) * per;
    const guided = cfg(out[IO.unetOut]?.data as Float32Array, half, o.guidance);
    const current = new Float32Array(half);
    current.set(source);
    for (const [j, x] of targets.entries()) current.set(x, (1 + j) * per);
    const next = scheduler.step(guided, t, current);
    source = o.trajectory ? (o.trajectory[o.steps - 1 - i] as Float32Array).slice() : next.slice(0, per);
    targets = targets.map((_, j) => next.slice((1 + j) * per, (2 + j) * per));
    if (blend) {
      blend.add(control.blendGroups.map((_, g) => out[SWAP_IO.blendMap + g]?.data as Float32Array));
      if (i >= (o.blend as BlendSettings).from) masks.push(blend.apply(source, targets));
    }
    trajectory?.push([source, ...targets]);
    // Computed only when asked: this step's guided output and latents are not touched again.
    o.onStep?.(i + 1, timesteps.length, () =>
      scheduler.predictOriginal(guided.subarray(per, 2 * per), t, current.subarray(per, 2 * per)),
    );
  }
  return { source, targets, masks, ...(trajectory ? { trajectory } : {}) };
}

/** One subject of a swap: the source prompt's word for it, and the learned concept that replaces it. */
export interface SwapSubject {
  /** A space-separated word of the source prompt ("cat"), matched exactly as the official code does. */
  word: string;
  concept: ConceptAdapter;
}

/** How many sampling steps each swap acts (src/spec/swap.ts: λφ, λM, λA as plain step counts). */
export type { SwapStrengths };

/** Plain step counts as windows: φ for i < λφ, M for i < λM, A for i < λA. */
export function strengthWindows(s: SwapStrengths): SwapWindows {
  return { phiSteps: s.selfOutputSteps, selfMapSteps: s.selfMapSteps, crossSteps: s.crossMapSteps };
}

/** What a swap reads from its prompts: the target prompt, the token mapper and the blend's words. */
export interface SwapPlan {
  targetPrompt: string;
  mapper: TokenMapper;
  /** Per subject: its word's tokens in the source prompt and its concept token's in the target prompt. */
  sourceWords: number[][];
  targetWords: number[][];
}

/**
 * The target prompt (each subject word replaced by "<token> <class>", e.g. "a photo of a sks dog"), the
 * mapper between the prompts and the blend's word positions; refuses, with a message naming the problem,
 * a subject word that is not a word of the source prompt and prompts longer than the text encoder reads.
 */
export function planSwap(
  tok: PromptTokenizer,
  sourcePrompt: string,
  subjects: readonly SwapSubject[],
): SwapPlan {
  if (subjects.length === 0) throw new UserFacingError("a swap needs at least one subject");
  for (const s of subjects) checkSubjectInPrompt(s.word, sourcePrompt);
  // One concept per word: a second would silently take the word's place in the target prompt while both
  // LoRAs still acted on the target rows.
  const twice = subjects.find((s, i) => subjects.findIndex((x) => x.word === s.word) !== i);
  if (twice)
    throw new UserFacingError(
      `the subject "${twice.word}" is named twice: each subject of the photo takes one concept`,
    );
  const words = sourcePrompt.split(" ");
  const byWord = new Map(subjects.map((s) => [s.word, s.concept]));
  const targetPrompt = words
    .map((w) => {
      const c = byWord.get(w);
      return c ? `${c.token} ${c.subject}` : w;
    })
    .join(" ");
  const mapper = alignTokens(
    promptTokens(tok, sourcePrompt, "source prompt"),
    promptTokens(tok, targetPrompt, "target prompt"),
  );
  return {
    targetPrompt,
    mapper,
    sourceWords: subjects.map((s) => wordIndices(tok, sourcePrompt, s.word)),
    targetWords: subjects.map((s) => wordIndices(tok, targetPrompt, s.concept.token)),
  };
}

/**
 * The start of a target variant: seed 0 starts from the inverted noise itself (the official result);
 * another seed moves it towards that seed's Gaussian noise by spherical interpolation (A1111's
 * "variation seed"), `variation` of the way: a small variation keeps the photo's layout, which the
 * inverted noise carries, and changes the details the target draws.
 */
export function variantStart(xT: Float32Array, seed: number, variation: number): Float32Array {
  if (seed === 0 || variation === 0) return xT;
  return slerp(xT, new GaussianRng(seed).normal(xT.length), variation);
}

/** Spherical interpolation from a to b (angle measured between the flattened vectors), in float64. */
export function slerp(a: Float32Array, b: Float32Array, t: number): Float32Array {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += (a[i] as number) * (b[i] as number);
    na += (a[i] as number) ** 2;
    nb += (b[i] as number) ** 2;
  }
  const cos = dot / Math.sqrt(na * nb);
  const theta = Math.acos(Math.min(1, Math.max(-1, cos)));
  const sin = Math.sin(theta);
  // Nearly parallel: linear interpolation is the limit.
  const [wa, wb] = sin < 1e-6 ? [1 - t, t] : [Math.sin((1 - t) * theta) / sin, Math.sin(t * theta) / sin];
  return a.map((v, i) => wa * v + wb * (b[i] as number));
}

export interface PhotoswapOptions {
  source: InvertedSource;
  subjects: readonly SwapSubject[];
  /** Variants are every strength × every seed, in that order (one strength's seeds, then the next's). */
  seeds: readonly number[];
  strengths: readonly SwapStrengths[];
  /** How far a seed ≠ 0 moves the target's start from the inverted noise (0…1; see variantStart). */
  variation: number;
  /** The local blend's threshold (official: 0.3); null: no blend. */
  blendThreshold: number | null;
  /**
   * The prompts' text encodings, [n, 77, D]: the target prompt's must use the concepts' learned token
   * embeddings (concept.ts). Default: the checkpoint's text encoder, for concepts without one.
   */
  encode?: (texts: string[]) => Promise<Float32Array>;
  /** Target variants per UNet call (default SWAP_BATCH): more run in several passes, each repeating the source. */
  maxBatch?: number;
  /** Called after each step of each pass: `step` counts over all passes; `preview` as jointSample's. */
  onStep?: (step: number, total: number, preview: () => Float32Array) => void;
  signal?: AbortSignal;
}

export interface PhotoswapVariant {
  seed: number;
  strengths: SwapStrengths;
  /** [1, 4, h, w] */
  latents: Float32Array;
}

export interface PhotoswapResult {
  targetPrompt: string;
  /** The source branch's final latents: the photo's reconstruction. */
  source: Float32Array;
  variants: PhotoswapVariant[];
}

/** Swaps the subjects of an inverted photo for the concepts: every seed × strength variant. */
export async function photoswap(sd: StableDiffusion, o: PhotoswapOptions): Promise<PhotoswapResult> {
  const s = o.source;
  const plan = planSwap(sd.tokenizer, s.prompt, o.subjects);
  for (const [i, st] of o.strengths.entries()) {
    for (const [key, v] of Object.entries(st)) {
      if (!Number.isInteger(v) || v < 0 || v > s.steps)
        throw new UserFacingError(
          `strength ${i + 1}: ${key} must be a whole number of steps from 0 to ${s.steps}`,
        );
    }
  }
  if (o.seeds.length === 0 || o.strengths.length === 0)
    throw new Error("photoswap: give at least one seed and one strength");
  if (!(o.variation >= 0 && o.variation <= 1)) throw new UserFacingError("variation must be between 0 and 1");
  const encode = o.encode ?? ((texts: string[]) => sd.encodeText(texts));
  if (!o.encode && o.subjects.some((x) => x.concept.embedding))
    throw new Error("photoswap: a concept with a learned token embedding needs its text encoding (encode)");
  const n = 77 * sd.contextShape[1];
  const texts = await encode([s.prompt, plan.targetPrompt]);
  const uncond = s.nullEmbeddings ?? (await sd.encodeText([""]));
  const loras = o.subjects.flatMap((x) => (x.concept.lora ? [x.concept.lora] : []));
  // Strength-major, so a grid of one column per seed has one row per strength (variantGrid). A repeated
  // seed or strength is swapped once (chat's lists drop repeats too): a copy would cost a pass and break
  // the grid's one column per seed.
  const seeds = [...new Set(o.seeds)];
  const strengths = [
    ...new Map(
      o.strengths.map((st) => [`${st.selfOutputSteps}/${st.selfMapSteps}/${st.crossMapSteps}`, st]),
    ).values(),
  ];
  const variants = strengths.flatMap((st) => seeds.map((seed) => ({ seed, strengths: st })));
  const size = { height: s.height, width: s.width };
  const maxBatch = o.maxBatch ?? SWAP_BATCH;
  const passes = Math.ceil(variants.length / maxBatch);
  const out: PhotoswapVariant[] = [];
  let source = s.xT;
  for (let p = 0; p < passes; p++) {
    const chunk = variants.slice(p * maxBatch, (p + 1) * maxBatch);
    const r = await jointSample(sd, {
      size,
      steps: s.steps,
      guidance: s.guidance,
      xT: s.xT,
      targets: chunk.map((v) => ({
        xT: variantStart(s.xT, v.seed, o.variation),
        windows: strengthWindows(v.strengths),
      })),
      sourceContext: texts.subarray(0, n),
      targetContext: texts.subarray(n, 2 * n),
      uncond,
      mapper: plan.mapper,
      ...(o.blendThreshold !== null
        ? {
            blend: {
              sourceWords: plan.sourceWords,
              targetWords: plan.targetWords,
              threshold: o.blendThreshold,
              from: officialBlendFrom(s.steps),
            },
          }
        : {}),
      ...(s.trajectory ? { trajectory: s.trajectory } : {}),
      ...(loras.length ? { lora: concatLora(loras) } : {}),
      signal: o.signal,
      onStep: (step, _, preview) => o.onStep?.(p * s.steps + step, passes * s.steps, preview),
    });
    source = r.source;
    r.targets.forEach((latents, i) => {
      out.push({ ...(chunk[i] as { seed: number; strengths: SwapStrengths }), latents });
    });
  }
  return { targetPrompt: plan.targetPrompt, source, variants: out };
}
