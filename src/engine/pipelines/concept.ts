/**
 * Concept learning for Photoswap: teach the model a new subject from 1–5 reference photos, as a rare
 * token ("sks") in the instance prompt "a photo of sks dog" (DreamBooth, Ruiz et al. 2023, with LoRA as
 * diffusers' `train_dreambooth_lora.py` trains it):
 *  - LoRA adapters on the UNet's attention projections, trained on the denoising loss of the references'
 *    latents under the instance prompt;
 *  - prior preservation: the same loss on class images the model itself generates from "a photo of dog"
 *    (cached per model, subject and settings), in the same batch with the same weight, so the class keeps
 *    its look;
 *  - optionally textual inversion of the token's input embedding, through the text encoder: its forward
 *    graph takes the row as an input, and the UNet loss's d/d context is pulled back through it by a VJP
 *    graph (models/learned-token.ts).
 * The result is a small serializable `Concept` (concept-file.ts); a swap uses its token, embedding and
 * LoRA (photoswap-types.ts: `ConceptAdapter`).
 */
import { createHash } from "node:crypto";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import type { ModelShape, Size } from "../../spec/shape.js";
import {
  type ConceptOptions,
  MAX_REFERENCES,
  MIN_REFERENCES,
  validateConceptOptions,
} from "../../spec/swap.js";
import type { ImageLimits } from "../../spec/upload.js";
import { repeatBatch } from "../batch.js";
import { GaussianRng } from "../diffusion/rng.js";
import { throwIfCancelled } from "../errors.js";
import { ImageInputError, loadImage } from "../image.js";
import type { LatentSize, LoraWeights, StableDiffusion } from "../index.js";
import { IO } from "../models/components.js";
import { LEARNED_TOKEN_IO, learnedTokenGraph, tokenRowsGraph } from "../models/learned-token.js";
import { Adam } from "../optim/adam.js";
import { EtaTracker } from "../progress.js";
import type { HostTensor } from "../runtime/index.js";
import type { ConceptAdapter } from "./photoswap-types.js";
import { sampleLatents } from "./sample.js";
import { SeededDraws, type TrainingDraws } from "./training.js";

const log = childLogger("concept");

/** A learned concept: what a swap needs (`ConceptAdapter`) and what it was learned from and with. */
export interface Concept extends ConceptAdapter {
  /** The model it was learned on: a concept only means something to that model. */
  modelId: string;
  /** The text encoder's width (the embedding's length). */
  contextDim: number;
  options: ConceptOptions;
  /** How many reference photos it was learned from. */
  references: number;
  /** The training loss per step. */
  losses: number[];
  /** Wall time of each stage. */
  seconds?: { classImages: number; encode: number; train: number };
}

export type ConceptStage = "class-images" | "encode" | "concept";

export interface ConceptProgress {
  stage: ConceptStage;
  step: number;
  total: number;
  loss?: number;
  etaSeconds?: number;
}

export interface LearnConceptArgs {
  /** The reference photos, each [1, 3, height, width] in [-1, 1] (`loadReferences`). */
  references: Float32Array[];
  /** Their size in pixels: a side (the square `loadReferences` makes by default) or width × height. */
  size: number | Size;
  /** The class word, e.g. "dog". */
  subject: string;
  options: ConceptOptions;
  onProgress?: (p: ConceptProgress) => void;
  signal?: AbortSignal;
  /** Each step's timesteps and noise (default: seeded from options.seed); tests hold them fixed. */
  draws?: TrainingDraws;
}

/** "a photo of sks dog": what the references are captioned with. */
export function instancePrompt(token: string, subject: string): string {
  return `a photo of ${token} ${subject}`;
}

/** "a photo of dog": what the class images are generated from. */
export function classPrompt(subject: string): string {
  return `a photo of ${subject}`;
}

/** The token's id; refuses a token the tokenizer splits, or one that is also the subject. */
export function conceptTokenId(
  sd: Pick<StableDiffusion, "tokenizer">,
  token: string,
  subject: string,
): number {
  const ids = sd.tokenizer.tokenize(token);
  if (ids.length !== 1) {
    throw new UserFacingError(
      `the concept token "${token}" is ${ids.length} tokens for this model's tokenizer; it must be one rare token (e.g. "sks")`,
    );
  }
  if (subject.split(/\s+/).includes(token)) {
    throw new UserFacingError(`the concept token "${token}" must not be the subject word itself`);
  }
  return ids[0] as number;
}

function checkSubject(sd: Pick<StableDiffusion, "tokenize">, subject: string, token: string): string {
  const s = subject.trim().replace(/\s+/g, " ");
  if (s.length === 0)
    throw new UserFacingError('the subject is empty: name the class of the new subject, e.g. "dog"');
  if (sd.tokenize(instancePrompt(token, s)).truncated) {
    throw new UserFacingError(
      `the subject "${s.slice(0, 40)}…" is longer than CLIP reads: use a word or two`,
    );
  }
  return s;
}

/** The square with the model's native pixel count, a multiple of its size multiple (512 for SD 1.5). */
export function referenceSide(shape: ModelShape): number {
  const { native, multiple } = shape;
  return Math.max(multiple, Math.round(Math.sqrt(native.width * native.height) / multiple) * multiple);
}

/**
 * The reference photos as the model's input: 1–5 of them, each decoded, oriented and centre-cropped to
 * the model's square training resolution (`size`, default `referenceSide`; a width × height is taken too),
 * in a fixed order (by content hash: the order they were sent in changes nothing learned, so the cache key
 * treats them as a set).
 * DreamBooth trains on square crops; references should show the subject roughly centred. A reference that
 * is not a usable photo is refused naming which one it is.
 */
export async function loadReferences(
  sd: Pick<StableDiffusion, "imageShape">,
  photos: readonly Uint8Array[],
  o: { size?: number | Size; limits?: ImageLimits } = {},
): Promise<{ images: Float32Array[]; hashes: string[]; size: number | Size }> {
  if (photos.length < MIN_REFERENCES || photos.length > MAX_REFERENCES) {
    throw new UserFacingError(
      `a concept is learned from ${MIN_REFERENCES} to ${MAX_REFERENCES} reference photos of the subject; got ${photos.length}`,
    );
  }
  const size = o.size ?? referenceSide(sd.imageShape);
  const hashed = photos.map((bytes) => ({ bytes, hash: createHash("sha256").update(bytes).digest("hex") }));
  const loaded = await Promise.all(
    hashed.map(async ({ bytes, hash }, i) => {
      try {
        return { hash, image: (await loadImage(bytes, { size, limits: o.limits })).tensor };
      } catch (err) {
        if (err instanceof ImageInputError)
          throw new ImageInputError(`reference photo ${i + 1}: ${err.message}`);
        throw err;
      }
    }),
  );
  loaded.sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
  return { images: loaded.map((l) => l.image), hashes: loaded.map((l) => l.hash), size };
}

/** Refuses a concept learned on another model (its LoRA and embedding mean nothing here). */
export function checkConceptModel(sd: Pick<StableDiffusion, "modelId" | "contextShape">, c: Concept): void {
  if (c.modelId !== sd.modelId || c.contextDim !== sd.contextShape[1]) {
    throw new UserFacingError(
      `this concept was learned on model "${c.modelId}"; the engine runs "${sd.modelId}": learn it again on this model`,
    );
  }
}

/** Generated class images per engine, by model, subject and settings: learned once, reused by every concept. */
const classCache = new WeakMap<StableDiffusion, Map<string, Promise<Float32Array[]>>>();

/**
 * Prior preservation's class images as latents (the generated latents themselves: decoding to pixels and
 * encoding again, as the DreamBooth script does, would only add the VAE's round-trip error).
 */
async function classLatents(
  sd: StableDiffusion,
  a: { subject: string; prior: NonNullable<ConceptOptions["prior"]>; seed: number; size: LatentSize },
  onStep: (step: number, total: number) => void,
  signal: AbortSignal | undefined,
): Promise<Float32Array[]> {
  const key = JSON.stringify([a.subject, a.prior.images, a.prior.steps, a.prior.guidance, a.seed, a.size]);
  let cache = classCache.get(sd);
  if (!cache) {
    cache = new Map();
    classCache.set(sd, cache);
  }
  const hit = cache.get(key);
  if (hit) return hit;
  const made = (async () => {
    const per = sd.latentChannels * a.size.height * a.size.width;
    const [uncond, cond] = [await sd.encodeText([""]), await sd.encodeText([classPrompt(a.subject)])];
    // One noise stream for the class images, apart from the training draws' (seed + 1).
    const rng = new GaussianRng(a.seed + 1);
    const chunk = Math.min(4, a.prior.images);
    const chunks = Math.ceil(a.prior.images / chunk);
    const out: Float32Array[] = [];
    for (let c = 0; c < chunks; c++) {
      // Every call has `chunk` images (one compiled UNet shape); a short last chunk's extras are dropped.
      const latents = await sampleLatents(sd, {
        latents: rng.normal(chunk * per),
        size: a.size,
        contexts: repeatBatch(cond, chunk),
        uncond,
        guidance: a.prior.guidance,
        steps: a.prior.steps,
        signal,
        label: `class image batch ${c + 1}/${chunks}`,
        onStep: (step) => onStep(c * a.prior.steps + step, chunks * a.prior.steps),
      });
      for (let i = 0; i < chunk && out.length < a.prior.images; i++)
        out.push(latents.slice(i * per, (i + 1) * per));
    }
    return out;
  })();
  cache.set(key, made);
  // A failed or cancelled generation is not kept.
  made.catch(() => cache.delete(key));
  return made;
}

/** Token ids and each learned token's mask for prompts, as the learned-token graphs take them. */
function tokenFeeds(
  sd: StableDiffusion,
  prompts: readonly string[],
  tokenIds: readonly number[],
): Record<string, HostTensor> {
  const n = prompts.length;
  const k = tokenIds.length;
  const ids = new BigInt64Array(n * 77);
  const mask = new Float32Array(n * 77 * k);
  prompts.forEach((p, i) => {
    sd.tokenize(p).ids.forEach((id, j) => {
      ids[i * 77 + j] = BigInt(id);
      const which = tokenIds.indexOf(id);
      if (which >= 0) mask[(i * 77 + j) * k + which] = 1;
    });
  });
  return {
    [IO.inputIds]: { dtype: "int64", shape: [n, 77], data: ids },
    [LEARNED_TOKEN_IO.mask]: { dtype: "float32", shape: [n, 77, k], data: mask },
  };
}

function f32(out: Record<string, HostTensor>, name: string): Float32Array {
  const t = out[name];
  if (!(t?.data instanceof Float32Array)) throw new Error(`learned-token graph: no float32 output "${name}"`);
  return t.data;
}

function stacked(rows: readonly Float32Array[]): HostTensor {
  const d = rows[0]?.length ?? 0;
  const data = new Float32Array(rows.length * d);
  rows.forEach((r, i) => {
    data.set(r, i * d);
  });
  return { dtype: "float32", shape: [rows.length, d], data };
}

/** The text encoder's context for prompts with learned tokens' rows in place of the vocabulary's. */
async function encodeWithRows(
  sd: StableDiffusion,
  prompts: readonly string[],
  tokenIds: readonly number[],
  rows: readonly Float32Array[],
): Promise<Float32Array> {
  const n = prompts.length;
  const k = tokenIds.length;
  const { session } = await sd.compile(`learned-token:${n}:${k}`, ({ checkpoint }) => ({
    graph: learnedTokenGraph(checkpoint.textEncoder.weights, checkpoint.textEncoder.config, {
      batch: n,
      tokens: k,
      vjp: false,
    }),
  }));
  const out = await session.run({
    ...tokenFeeds(sd, prompts, tokenIds),
    [LEARNED_TOKEN_IO.embedding]: stacked(rows),
  });
  return f32(out, IO.lastHiddenState);
}

/** d loss / d row from d loss / d context of one prompt that holds the token. */
async function rowGradient(
  sd: StableDiffusion,
  prompt: string,
  tokenId: number,
  row: Float32Array,
  upstream: Float32Array,
): Promise<Float32Array> {
  const { session } = await sd.compile("learned-token-vjp:1:1", ({ checkpoint }) => ({
    graph: learnedTokenGraph(checkpoint.textEncoder.weights, checkpoint.textEncoder.config, {
      batch: 1,
      vjp: true,
    }),
  }));
  const out = await session.run({
    ...tokenFeeds(sd, [prompt], [tokenId]),
    [LEARNED_TOKEN_IO.embedding]: stacked([row]),
    [LEARNED_TOKEN_IO.upstream]: { dtype: "float32", shape: [1, 77, row.length], data: upstream },
  });
  return f32(out, LEARNED_TOKEN_IO.dEmbedding);
}

/** The vocabulary's input embedding of a token: where textual inversion starts. */
async function vocabularyRow(sd: StableDiffusion, tokenId: number): Promise<Float32Array> {
  const { session } = await sd.compile("token-rows:1", ({ checkpoint }) => ({
    graph: tokenRowsGraph(checkpoint.textEncoder.weights, checkpoint.textEncoder.config, 1),
  }));
  const out = await session.run({
    [IO.inputIds]: { dtype: "int64", shape: [1], data: BigInt64Array.of(BigInt(tokenId)) },
  });
  return f32(out, LEARNED_TOKEN_IO.embedding);
}

/**
 * Text encodings [n, 77, D] of prompts that may name concepts' tokens (the swap's target prompt): with
 * each concept's learned embedding where it has one, otherwise the plain text encoder's. Two concepts
 * with learned embeddings must not share a token.
 */
export async function encodeWithConcepts(
  sd: StableDiffusion,
  prompts: readonly string[],
  concepts: readonly ConceptAdapter[],
): Promise<Float32Array> {
  const learned = concepts.filter((c) => c.embedding);
  if (learned.length === 0) return sd.encodeText([...prompts]);
  const ids = learned.map((c) => c.tokenId);
  const twice = ids.find((id, i) => ids.indexOf(id) !== i);
  if (twice !== undefined) {
    const token = learned.find((c) => c.tokenId === twice)?.token;
    throw new UserFacingError(
      `two concepts in one swap both use the token "${token}": learn one of them with another token`,
    );
  }
  return encodeWithRows(
    sd,
    prompts,
    ids,
    learned.map((c) => c.embedding as Float32Array),
  );
}

/** Relative cost of a step of each stage, for ETAs before a stage has been timed (≈ UNet passes per row). */
const COST = { classImages: 2, train: 3 } as const;

export async function learnConcept(sd: StableDiffusion, args: LearnConceptArgs): Promise<Concept> {
  const o = validateConceptOptions(args.options);
  const tokenId = conceptTokenId(sd, o.token, args.subject);
  const subject = checkSubject(sd, args.subject, o.token);
  const n = args.references.length;
  if (n < MIN_REFERENCES || n > MAX_REFERENCES) {
    throw new UserFacingError(
      `a concept is learned from ${MIN_REFERENCES} to ${MAX_REFERENCES} reference photos of the subject; got ${n}`,
    );
  }
  const { signal } = args;
  const px = typeof args.size === "number" ? { width: args.size, height: args.size } : args.size;
  for (const [i, r] of args.references.entries()) {
    if (r.length !== 3 * px.height * px.width)
      throw new Error(`learnConcept: reference ${i + 1} is not 3×${px.height}×${px.width}`);
  }
  const report = args.onProgress ?? (() => {});
  const size = sd.latentSize(px.height, px.width);
  const per = sd.latentChannels * size.height * size.width;
  const classChunk = o.prior ? Math.min(4, o.prior.images) : 0;
  const eta = new EtaTracker([
    {
      stage: "class-images",
      steps: o.prior ? Math.ceil(o.prior.images / classChunk) * o.prior.steps : 0,
      weight: COST.classImages * classChunk,
    },
    { stage: "encode", steps: n, weight: 1 },
    { stage: "concept", steps: o.steps, weight: COST.train * o.batch * (o.prior ? 2 : 1) },
  ]);
  throwIfCancelled(signal, "the start");
  const started = performance.now();

  // 1. Class images (prior preservation), generated by the model itself, or taken from the cache.
  let classes: Float32Array[] = [];
  if (o.prior) {
    eta.begin("class-images");
    const prior = o.prior;
    classes = await classLatents(
      sd,
      { subject, prior, seed: o.seed, size },
      (step, total) =>
        report({ stage: "class-images", step, total, etaSeconds: eta.step("class-images", step) }),
      signal,
    );
  }
  eta.finish("class-images");
  const classSeconds = (performance.now() - started) / 1000;

  // 2. The references' latents: the VAE posterior mean (the photo without the VAE's sampling noise).
  eta.begin("encode");
  const refs: Float32Array[] = [];
  for (const [i, image] of args.references.entries()) {
    throwIfCancelled(signal, `encoding reference ${i + 1}/${n}`);
    refs.push((await sd.encodeImage(image, px.height, px.width)).mean);
    report({ stage: "encode", step: i + 1, total: n, etaSeconds: eta.step("encode", i + 1) });
  }
  const encodeSeconds = (performance.now() - started) / 1000 - classSeconds;

  // 3. LoRA (and the token's embedding) on the denoising loss of references + class images.
  const prompt = instancePrompt(o.token, subject);
  const lora = sd.newLora(o.loraRank, o.loraAlpha, o.seed);
  const row = o.textualInversion ? await vocabularyRow(sd, tokenId) : undefined;
  const rowAdam = row && o.textualInversion ? new Adam([row], { lr: o.textualInversion.lr }) : undefined;
  const classContext = o.prior ? await sd.encodeText([classPrompt(subject)]) : undefined;
  const fixedInstance = row ? undefined : await sd.encodeText([prompt]);
  const ctxSize = 77 * sd.contextShape[1];
  const rows = o.batch * (o.prior ? 2 : 1);
  // Adam for the adapter inside its training graph (optim/trainer.ts); the token's row, small, on the host.
  const trainer = await sd.trainer({
    lora,
    wrtContext: row !== undefined,
    batch: rows,
    size,
    adam: { lr: o.lr },
  });
  const draws = args.draws ?? new SeededDraws(o.seed, sd.scheduler().numTrainTimesteps);
  const losses: number[] = [];
  eta.begin("concept");
  const trainStarted = performance.now();
  for (let step = 1; step <= o.steps; step++) {
    throwIfCancelled(signal, `concept step ${step}/${o.steps}`);
    const instance = row
      ? await encodeWithRows(sd, [prompt], [tokenId], [row])
      : (fixedInstance as Float32Array);
    const latents0 = new Float32Array(rows * per);
    const context = new Float32Array(rows * ctxSize);
    for (let k = 0; k < o.batch; k++) {
      // References and class images in turn, the same order on every run.
      const at = (step - 1) * o.batch + k;
      latents0.set(refs[at % n] as Float32Array, k * per);
      context.set(instance, k * ctxSize);
      if (classContext) {
        latents0.set(classes[at % classes.length] as Float32Array, (o.batch + k) * per);
        context.set(classContext, (o.batch + k) * ctxSize);
      }
    }
    const r = await trainer.step({
      latents0,
      noise: draws.noise(rows * per),
      t: draws.timesteps(rows),
      context,
    });
    if (!Number.isFinite(r.loss))
      throw new Error(`concept learning: the loss became ${r.loss} at step ${step}`);
    if (row && rowAdam) {
      // The instance rows' d/d context, summed (they share one context), pulled back to the token's row.
      const upstream = new Float32Array(ctxSize);
      const d = r.dContext as Float32Array;
      for (let k = 0; k < o.batch; k++)
        for (let j = 0; j < ctxSize; j++)
          upstream[j] = (upstream[j] as number) + (d[k * ctxSize + j] as number);
      rowAdam.step([await rowGradient(sd, prompt, tokenId, row, upstream)]);
    }
    losses.push(r.loss);
    report({ stage: "concept", step, total: o.steps, loss: r.loss, etaSeconds: eta.step("concept", step) });
  }
  await trainer.finish();
  const trainSeconds = (performance.now() - trainStarted) / 1000;
  log.info({ subject, steps: o.steps, classSeconds, encodeSeconds, trainSeconds }, "concept learned");
  return {
    token: o.token,
    tokenId,
    subject,
    ...(row ? { embedding: row } : {}),
    lora: lora as LoraWeights,
    modelId: sd.modelId,
    contextDim: sd.contextShape[1],
    options: o,
    references: n,
    losses,
    seconds: { classImages: classSeconds, encode: encodeSeconds, train: trainSeconds },
  };
}
