/**
 * A whole Photoswap edit of one photo, as the CLI, the engine worker, the demo and the benchmark run it:
 * the photo's latents → its inversion with the source prompt (direct or null-text; a previous one of the
 * same photo and settings is reused) → the swap's seed × strength variants → decoded images, with one
 * progress stream and an ETA over every stage. Concept learning is its own step (concept.ts): a swap
 * takes a learned concept.
 */
import { createHash } from "node:crypto";
import { UserFacingError } from "../../errors.js";
import type { Box } from "../../spec/shape.js";
import { SWAP_BATCH, type SwapStrengthKey, sourcePromptFor } from "../../spec/swap.js";
import { throwIfCancelled } from "../errors.js";
import { type Tile, tileGrid } from "../grid.js";
import { cropImage } from "../image.js";
import type { StableDiffusion } from "../index.js";
import { EtaTracker } from "../progress.js";
import { encodeWithConcepts } from "./concept.js";
import { type InversionProgress, invertDirect, invertNullText, psnr } from "./inversion.js";
import { photoswap, type SwapStrengths } from "./photoswap.js";
import type { ConceptAdapter, InversionMethod, InvertedSource } from "./photoswap-types.js";

export type SwapStage = "encode" | "invert" | "null-text" | "swap" | "decode";

export interface SwapProgress {
  stage: SwapStage;
  step: number;
  total: number;
  loss?: number;
  /** Seconds left in the whole edit. */
  etaSeconds?: number;
  /**
   * While swapping: the first variant's current estimate of its result, [3, height, width] of the photo's
   * content in [-1, 1]. It costs a VAE decode, so it is made only when called (when a preview is due).
   */
  preview?: () => Promise<Float32Array>;
}

export interface SwapEditArgs {
  /** The photo at its working shape, [1, 3, height, width] in [-1, 1] (image.ts's loadPhoto). */
  image: Float32Array;
  height: number;
  width: number;
  /** Where the photo's own pixels are (loadPhoto's shape.content): every image is cropped to it. */
  content?: Box;
  /** The word for the subject to replace ("cat"). */
  subject: string;
  /** The photo's description, naming the subject as a word (default "a photo of a <subject>"). */
  sourcePrompt?: string;
  concept: ConceptAdapter;
  /** More subjects of the photo, each swapped for its own concept in the same swap (one target prompt). */
  others?: ReadonlyArray<{ word: string; concept: ConceptAdapter }>;
  inversion: InversionMethod;
  /** Null-text's inner Adam steps per sampling step (official 10). */
  nullTextInnerSteps?: number;
  /** An inversion of this photo with these settings (`inversionKey`), kept from an earlier swap. */
  inverted?: InvertedSource;
  steps: number;
  guidance: number;
  seeds: readonly number[];
  strengths: readonly SwapStrengths[];
  /** How far seeds other than 0 move the target's start (photoswap.ts's variantStart). */
  variation: number;
  /** The local blend's threshold; null: none. */
  blendThreshold: number | null;
  /** Variants per UNet call. */
  batch?: number;
  onProgress?: (p: SwapProgress) => void;
  signal?: AbortSignal;
}

export interface SwapImage {
  /** [3, height, width] in [-1, 1], cropped to the photo's content. */
  image: Float32Array;
  height: number;
  width: number;
}

export interface SwapVariantImage extends SwapImage {
  seed: number;
  strengths: SwapStrengths;
}

export interface SwapEditResult {
  inverted: InvertedSource;
  /** Whether `inverted` came from the arguments (a cached inversion). */
  reusedInversion: boolean;
  sourcePrompt: string;
  targetPrompt: string;
  /** The source branch: the photo as the swap reconstructs it. */
  reconstruction: SwapImage;
  /** PSNR (dB, images in [−1, 1]) of the reconstruction against the decoded photo latents. */
  reconstructionPsnr: number;
  variants: SwapVariantImage[];
  seconds: { encode: number; invert: number; swap: number; decode: number };
}

/**
 * What an inversion depends on, hashed: the working image's pixels and its size (a forced size and the
 * photo's own shape are different images, so different inversions), the prompt, the steps and guidance
 * the swap samples with, the method and its settings, and the model. Two swaps with the same key share
 * one inversion (and so does every concept swapped into the photo: the inversion never sees the concept).
 */
export function inversionKey(a: {
  image: Float32Array;
  height: number;
  width: number;
  /** Ignored: the inversion is of the whole working image (a PhotoArgs can be passed as it is). */
  content?: Box;
  prompt: string;
  steps: number;
  guidance: number;
  inversion: InversionMethod;
  nullTextInnerSteps?: number;
  modelId: string;
}): string {
  const h = createHash("sha256");
  h.update(new Uint8Array(a.image.buffer, a.image.byteOffset, a.image.byteLength));
  const { image: _, content: __, ...settings } = a;
  h.update(JSON.stringify({ ...settings, nullTextInnerSteps: a.nullTextInnerSteps ?? null }));
  return h.digest("hex");
}

/** "seed 3 · φ10 M25 A20": how a variant is named on its tile and in file names' reports. */
export function variantLabel(v: { seed: number; strengths: Record<SwapStrengthKey, number> }): string {
  const s = v.strengths;
  return `seed ${v.seed} · φ${s.selfOutputSteps} M${s.selfMapSteps} A${s.crossMapSteps}`;
}

/**
 * The grid a user picks from: one tile per variant, numbered in the variants' order (strength-major, see
 * photoswap): seeds across, strengths down. One strength's seeds wrap at 4 a row; with several strengths
 * each takes one row of all its seeds (at most 8), so a row is always one strength.
 */
export function variantGrid(variants: readonly SwapVariantImage[]): Promise<Buffer> {
  const seeds = new Set(variants.map((v) => v.seed)).size;
  const columns = seeds === variants.length ? Math.min(4, seeds) : seeds;
  const tiles: Tile[] = variants.map((v, i) => ({
    image: v.image,
    width: v.width,
    height: v.height,
    label: `${i + 1} · ${variantLabel(v)}`,
  }));
  return tileGrid(tiles, { columns });
}

/** Runs the edit (see the file comment). */
export async function swapEdit(sd: StableDiffusion, a: SwapEditArgs): Promise<SwapEditResult> {
  const sourcePrompt = a.sourcePrompt ?? sourcePromptFor(a.subject);
  if (a.seeds.length === 0) throw new UserFacingError("give at least one seed");
  if (a.inverted && (a.inverted.prompt !== sourcePrompt || a.inverted.steps !== a.steps)) {
    throw new Error("swapEdit: the cached inversion was made with another prompt or step count");
  }
  const size = sd.latentSize(a.height, a.width);
  const variants = a.seeds.length * a.strengths.length;
  const batch = a.batch ?? SWAP_BATCH;
  const passes = Math.ceil(variants / batch);
  const reuse = a.inverted !== undefined;
  const inner = a.nullTextInnerSteps ?? 10;
  // Relative cost per step, in UNet rows: inversion 1, null-text ≈ inner × 3 (forward + backward) + 3, a
  // swap step 2 × (targets + 1).
  const eta = new EtaTracker([
    { stage: "invert", steps: reuse ? 0 : a.steps, weight: 1 },
    { stage: "null-text", steps: reuse || a.inversion !== "null-text" ? 0 : a.steps, weight: 3 * inner + 3 },
    { stage: "swap", steps: passes * a.steps, weight: 2 * (Math.min(batch, variants) + 1) },
  ]);
  let current = "";
  const report = (p: SwapProgress) => {
    if (p.stage !== current && p.stage !== "encode" && p.stage !== "decode") {
      current = p.stage;
      eta.begin(p.stage);
    }
    const left = p.stage === "encode" || p.stage === "decode" ? undefined : eta.step(p.stage, p.step);
    a.onProgress?.({ ...p, ...(left !== undefined ? { etaSeconds: left } : {}) });
  };
  const t0 = performance.now();
  a.onProgress?.({ stage: "encode", step: 0, total: 1 });
  const { mean: latents0 } = await sd.encodeImage(a.image, a.height, a.width);
  const t1 = performance.now();
  throwIfCancelled(a.signal, "Photoswap: after encoding the photo");
  let inverted = a.inverted;
  if (!inverted) {
    const args = {
      size,
      latents0,
      prompt: sourcePrompt,
      steps: a.steps,
      guidance: a.guidance,
      signal: a.signal,
      onProgress: (p: InversionProgress) =>
        report({
          stage: p.stage,
          step: p.step,
          total: p.total,
          ...(p.loss !== undefined ? { loss: p.loss } : {}),
        }),
    };
    inverted =
      a.inversion === "direct"
        ? await invertDirect(sd, args)
        : (await invertNullText(sd, { ...args, innerSteps: inner })).source;
  }
  const t2 = performance.now();
  const box = a.content ?? { left: 0, top: 0, width: a.width, height: a.height };
  const subjects = [{ word: a.subject, concept: a.concept }, ...(a.others ?? [])];
  const swapped = await photoswap(sd, {
    source: inverted,
    subjects,
    seeds: a.seeds,
    strengths: a.strengths,
    variation: a.variation,
    blendThreshold: a.blendThreshold,
    encode: (texts) =>
      encodeWithConcepts(
        sd,
        texts,
        subjects.map((s) => s.concept),
      ),
    maxBatch: batch,
    onStep: (step, total, x0) =>
      report({
        stage: "swap",
        step,
        total,
        preview: async () => cropImage(await sd.decodeLatents(x0(), size), a, box),
      }),
    signal: a.signal,
  });
  const t3 = performance.now();
  throwIfCancelled(a.signal, "Photoswap: decoding");
  const all = [inverted.latents0, swapped.source, ...swapped.variants.map((v) => v.latents)];
  const images: Float32Array[] = [];
  for (let i = 0; i < all.length; i += batch) {
    a.onProgress?.({ stage: "decode", step: i, total: all.length });
    const chunk = all.slice(i, i + batch);
    const joined = new Float32Array(chunk.reduce((n, x) => n + x.length, 0));
    chunk.forEach((x, k) => {
      joined.set(x, k * x.length);
    });
    const decoded = await sd.decodeLatents(joined, size);
    const per = decoded.length / chunk.length;
    for (let k = 0; k < chunk.length; k++) images.push(decoded.slice(k * per, (k + 1) * per));
  }
  const t4 = performance.now();
  const crop = (i: number) => cropImage(images[i] as Float32Array, a, box);
  const img = (i: number): SwapImage => ({ image: crop(i), height: box.height, width: box.width });
  return {
    inverted,
    reusedInversion: reuse,
    sourcePrompt,
    targetPrompt: swapped.targetPrompt,
    reconstruction: img(1),
    reconstructionPsnr: psnr(crop(1), crop(0)),
    variants: swapped.variants.map((v, i) => ({
      ...img(2 + i),
      seed: v.seed,
      strengths: v.strengths,
    })),
    seconds: {
      encode: (t1 - t0) / 1000,
      invert: (t2 - t1) / 1000,
      swap: (t3 - t2) / 1000,
      decode: (t4 - t3) / 1000,
    },
  };
}
