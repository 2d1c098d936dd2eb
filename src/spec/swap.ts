// Photoswap's user-facing settings: the swap strengths and their defaults, and the limits a request is
// checked against (by the chat layer, the CLI and the queue alike).
import { createHash } from "node:crypto";
import { UserFacingError } from "../errors.js";
import { Problems } from "./problems.js";

/** Reference photos of the new subject a concept is learned from. */
export const MIN_REFERENCES = 1;
export const MAX_REFERENCES = 5;

/** DDIM steps of a swap (the official code's NUM_DDIM_STEPS). */
export const SWAP_SAMPLING_STEPS = 50;
export const SWAP_GUIDANCE = 7.5;

/**
 * Photoswap's swap strengths: for how many of the sampling steps the target generation takes the
 * source's self-attention output φ, self-attention map M and cross-attention map A (paper: λφ=10,
 * λM=25, λA=20 of 50). More steps keep more of the source's layout and appearance; fewer let the new
 * subject show more of itself.
 */
export const SWAP_STRENGTHS = [
  { name: "self_output_steps", key: "selfOutputSteps", what: "self-attention output φ", paper: 10 },
  { name: "self_map_steps", key: "selfMapSteps", what: "self-attention map M", paper: 25 },
  { name: "cross_map_steps", key: "crossMapSteps", what: "cross-attention map A", paper: 20 },
] as const;
export type SwapStrengthKey = (typeof SWAP_STRENGTHS)[number]["key"];

/** One set of swap strengths: sampling steps for φ, M and A. */
export type SwapStrengths = Record<SwapStrengthKey, number>;

/** The paper's strengths, by key. */
export const PAPER_STRENGTHS = Object.fromEntries(SWAP_STRENGTHS.map((s) => [s.key, s.paper])) as Record<
  SwapStrengthKey,
  number
>;

/** What a swap request may ask for. */
export const SWAP_LIMITS = {
  /** A strength counts sampling steps, so it is at most the largest step count. */
  strengthSteps: 150,
  samplingSteps: 150,
  conceptSteps: 5000,
  /** Images of one swap: seeds × strengths. */
  variants: 16,
} as const;

/** Longest chat `strengths` option: 16 triples of three-digit step counts, with separators. */
export const MAX_STRENGTHS_LENGTH = 200;

/**
 * A list of swap strengths written as φ/M/A step triples separated by commas or spaces
 * ("10/25/20, 5/15/10"; chat's `strengths` option): each step count a whole number from 0 to `steps`,
 * at most SWAP_LIMITS.variants triples, repeats dropped. `option` names the option in messages.
 */
export function parseStrengthList(value: string, option: string, steps: number): SwapStrengths[] {
  const form = 'φ/M/A step triples separated by commas, e.g. "10/25/20,5/15/10"';
  const parts = value
    .trim()
    // "10 / 25 / 20" is one triple: spaces also separate triples, so they go from around the slashes first.
    .replace(/\s*\/\s*/g, "/")
    .split(/[\s,]+/)
    .filter(Boolean);
  if (parts.length === 0) throw new UserFacingError(`${option} is empty: give ${form}`);
  const list = new Map<string, SwapStrengths>();
  for (const part of parts) {
    const m = /^(\d+)\/(\d+)\/(\d+)$/.exec(part);
    if (!m) throw new UserFacingError(`${option}: "${part}" is not three whole step counts; give ${form}`);
    const [phi, map, cross] = m.slice(1).map(Number) as [number, number, number];
    const over = [phi, map, cross].find((n) => n > steps);
    if (over !== undefined) {
      throw new UserFacingError(
        `${option}: "${part}" asks for ${over} steps; each step count is at most the ${steps} sampling steps`,
      );
    }
    list.set(`${phi}/${map}/${cross}`, { selfOutputSteps: phi, selfMapSteps: map, crossMapSteps: cross });
  }
  if (list.size > SWAP_LIMITS.variants) {
    throw new UserFacingError(`${option} lists ${list.size} strengths; the limit is ${SWAP_LIMITS.variants}`);
  }
  return [...list.values()];
}

/** Refuses more than SWAP_LIMITS.variants images in one swap; `options` names what sets the two counts. */
export function checkVariantCount(seeds: number, strengths: number, options: string): void {
  if (seeds * strengths > SWAP_LIMITS.variants) {
    throw new UserFacingError(
      `${options}: ${seeds} seed(s) × ${strengths} strength(s) make ${seeds * strengths} variants; the limit is ${SWAP_LIMITS.variants}`,
    );
  }
}

/**
 * How a swap inverts its source photo (docs/PHOTOSWAP.md §1): `direct` reconstructs it exactly at the cost
 * of N UNet passes (the default); `null-text` is the official method, ≈ 30× that at its 10 inner steps.
 */
export const INVERSION_METHODS = ["direct", "null-text"] as const;
export type InversionMethodName = (typeof INVERSION_METHODS)[number];
export const DEFAULT_INVERSION: InversionMethodName = "direct";
/** Null-text inversion's Adam steps per sampling step (the official code's). */
export const NULL_TEXT_INNER_STEPS = 10;

/**
 * The local blend's threshold (the official 0.3): where the subject's normalized cross-attention exceeds
 * it, in the source or the target, the target is its own; elsewhere it is the source photo.
 */
export const SWAP_BLEND_THRESHOLD = 0.3;
/**
 * How far a seed other than 0 moves a variant's starting noise from the photo's inverted noise (0…1,
 * spherical interpolation; seed 0 is the official result). Chosen, not measured on real weights: small
 * enough to keep the photo's layout, which the inverted noise carries.
 */
export const SWAP_VARIATION = 0.2;
/** Variants (target rows) per UNet call: 4 is a batch of 10 rows with the source. */
export const SWAP_BATCH = 4;

/** "a photo of a cat": the source prompt when the user gives none. */
export function sourcePromptFor(subject: string): string {
  return `a photo of a ${subject}`;
}

/**
 * Refuses a subject that is not a whole word of the source prompt (the official code matches
 * space-separated words exactly), before anything is queued or loaded.
 */
export function checkSubjectInPrompt(subject: string, prompt: string): void {
  if (!prompt.split(" ").includes(subject)) {
    throw new UserFacingError(
      `the subject "${subject}" is not a word of the source prompt "${prompt}": name the subject as the prompt spells it (a whole word, without punctuation)`,
    );
  }
}

/**
 * Why `subject` cannot be the subject of a swap whose photo is described as "a photo of a <subject>"
 * (chat, the demo, the queue's `swap.edit`), or undefined when it can. Chat and the queue both ask this
 * one function, so the queue refuses exactly what chat refuses. The words follow the option's name
 * ("`subject` must be one word, …"). With `token`, the rare token the concept is learned as ("sks <subject>")
 * is refused too: it would be refused by the engine only once the swap's turn came, in words about a
 * token the user never chose (CLIP reads it in lower case).
 */
export function subjectProblem(subject: string, token?: string): string | undefined {
  const word = subject.trim();
  // The swap finds the subject as a whole word of that prompt: a phrase is never found.
  if (/\s/.test(word)) {
    return `must be one word, what the photo shows (e.g. "dog", not "${word}"): the swap finds it as a word of "${sourcePromptFor(word)}"`;
  }
  // "a" (or "photo", "of") is also another word of the prompt made from it: the swap would replace each.
  if (sourcePromptFor("").trim().split(" ").includes(word)) {
    return `"${word}" is also another word of "${sourcePromptFor(word)}", where the swap finds it: name what the photo shows (e.g. "dog")`;
  }
  if (token !== undefined && word.toLowerCase() === token) {
    return `cannot be "${word}": I learn the new subject as "${token} <subject>"; name what the photo shows (e.g. "dog")`;
  }
  return undefined;
}

/**
 * Refuses a subject that subjectProblem refuses, naming `option`. Checked before anything is queued: a
 * two-word subject would otherwise fail only after its concept was learned.
 */
export function checkSubjectWord(subject: string, option: string, token?: string): void {
  const problem = subjectProblem(subject, token);
  if (problem) throw new UserFacingError(`${option} ${problem}`);
}

/**
 * Concept learning (DreamBooth-style LoRA on the reference photos, optional textual inversion of the
 * token): what one run does. The presets are `CONCEPT_PRESETS`; `conceptOptions` merges overrides.
 */
export interface ConceptOptions {
  /**
   * The rare single token the subject is taught as (the instance prompt is "a photo of <token>
   * <subject>"): one the model barely uses, so learning it overwrites little. The engine checks that its
   * tokenizer reads it as one token.
   */
  token: string;
  /** Optimizer steps of the LoRA (and of the embedding, when textual inversion is on). */
  steps: number;
  /** Reference samples per step, each with its own timestep and noise (as many class samples again). */
  batch: number;
  /** Adam learning rate of the LoRA. */
  lr: number;
  loraRank: number;
  /** LoRA scale is alpha / rank (diffusers' convention). */
  loraAlpha: number;
  /**
   * Prior preservation (DreamBooth): `images` class images the model itself generates from "a photo of
   * <subject>" (DDIM `steps`, guidance `guidance`; cached per model and subject), trained on alongside the
   * references with the same weight, so the class keeps its look. null: off.
   */
  prior: { images: number; steps: number; guidance: number } | null;
  /** Also learn the token's input embedding (Adam at `lr`) through the text encoder. null: off. */
  textualInversion: { lr: number } | null;
  /** Seeds the timesteps, the noise, the LoRA initialization and the class images. */
  seed: number;
}

export type ConceptPresetName = "fast" | "balanced" | "dreambooth";
export const CONCEPT_PRESET_NAMES: readonly ConceptPresetName[] = ["fast", "balanced", "dreambooth"];
/** What a swap learns its concept with unless told otherwise: the preset aimed at ≤ 60 s on one GPU. */
export const DEFAULT_CONCEPT_PRESET: ConceptPresetName = "fast";

/** DreamBooth's rare token (Ruiz et al. 2023, and diffusers' examples): one BPE token in CLIP's vocabulary. */
export const DEFAULT_CONCEPT_TOKEN = "sks";

/**
 * - dreambooth: diffusers' `train_dreambooth_lora.py` defaults (rank 4, lr 1e-4, 500 steps of one
 *   reference and one class image, 100 class images at 50 DDIM steps).
 * - balanced: 200 steps at 3e-4 and rank 8, 8 class images, plus textual inversion of the token.
 * - fast: 100 steps at 5e-4, 4 class images at 25 DDIM steps: the time goal of a chat swap (issue 10:
 *   ≤ 60 s on an H200).
 * None is tuned on real weights yet (the fixtures and the benchmark have random ones): the step counts
 * and rates are the usual LoRA-DreamBooth ranges, scaled so that steps × lr stays about constant.
 */
export const CONCEPT_PRESETS: Record<ConceptPresetName, ConceptOptions> = {
  dreambooth: {
    token: DEFAULT_CONCEPT_TOKEN,
    steps: 500,
    batch: 1,
    lr: 1e-4,
    loraRank: 4,
    loraAlpha: 4,
    prior: { images: 100, steps: 50, guidance: SWAP_GUIDANCE },
    textualInversion: null,
    seed: 0,
  },
  balanced: {
    token: DEFAULT_CONCEPT_TOKEN,
    steps: 200,
    batch: 1,
    lr: 3e-4,
    loraRank: 8,
    loraAlpha: 8,
    prior: { images: 8, steps: 25, guidance: SWAP_GUIDANCE },
    textualInversion: { lr: 1e-3 },
    seed: 0,
  },
  fast: {
    token: DEFAULT_CONCEPT_TOKEN,
    steps: 100,
    batch: 1,
    lr: 5e-4,
    loraRank: 4,
    loraAlpha: 4,
    prior: { images: 4, steps: 25, guidance: SWAP_GUIDANCE },
    textualInversion: null,
    seed: 0,
  },
};

/** What a concept request may ask for; every refusal names the setting and its limit. */
export const CONCEPT_LIMITS = {
  steps: SWAP_LIMITS.conceptSteps,
  batch: 8,
  lr: 1,
  loraRank: 128,
  loraAlpha: 1024,
  classImages: 200,
  classSteps: 150,
  guidanceMax: 30,
  seed: 2 ** 32 - 1,
} as const;

export type ConceptOverrides = Partial<Omit<ConceptOptions, "prior" | "textualInversion">> & {
  prior?: Partial<NonNullable<ConceptOptions["prior"]>> | null;
  textualInversion?: Partial<NonNullable<ConceptOptions["textualInversion"]>> | null;
};

/** A preset with some settings overridden, validated. `prior: null` / `textualInversion: null` turn them off. */
export function conceptOptions(
  preset: ConceptPresetName = DEFAULT_CONCEPT_PRESET,
  overrides: ConceptOverrides = {},
): ConceptOptions {
  const base = CONCEPT_PRESETS[preset];
  if (!base) {
    throw new UserFacingError(`unknown concept preset "${preset}" (use ${CONCEPT_PRESET_NAMES.join(", ")})`);
  }
  const merged = <T extends object>(b: T | null, o: Partial<T> | null | undefined, fallback: T): T | null =>
    o === null ? null : o === undefined ? b : { ...(b ?? fallback), ...o };
  return validateConceptOptions({
    ...base,
    ...overrides,
    prior: merged(
      base.prior,
      overrides.prior,
      CONCEPT_PRESETS.fast.prior as NonNullable<ConceptOptions["prior"]>,
    ),
    textualInversion: merged(base.textualInversion, overrides.textualInversion, { lr: 1e-3 }),
  });
}

/**
 * What a `swap.concept` request learns with: the default preset with the request's steps and seed. The
 * queue's cache lookup and the engine resolve requests through this one function, so their keys agree.
 */
export function requestedConceptOptions(request: { steps?: number; seed: number }): ConceptOptions {
  return conceptOptions(DEFAULT_CONCEPT_PRESET, {
    ...(request.steps !== undefined ? { steps: request.steps } : {}),
    seed: request.seed,
  });
}

/** Checks every concept setting against CONCEPT_LIMITS; throws one UserFacingError listing all problems. */
export function validateConceptOptions(o: ConceptOptions): ConceptOptions {
  const p = new Problems();
  if (typeof o.token !== "string" || !/^[a-z]{2,12}$/.test(o.token)) {
    p.list.push(
      `concept token must be 2 to 12 lowercase letters, e.g. "${DEFAULT_CONCEPT_TOKEN}" (got ${JSON.stringify(o.token)})`,
    );
  }
  p.int("concept steps", o.steps, 1, CONCEPT_LIMITS.steps);
  p.int("concept batch (references per step)", o.batch, 1, CONCEPT_LIMITS.batch);
  p.num("concept learning rate", o.lr, 0, CONCEPT_LIMITS.lr, true);
  p.int("concept LoRA rank", o.loraRank, 1, CONCEPT_LIMITS.loraRank);
  p.num("concept LoRA alpha", o.loraAlpha, 0, CONCEPT_LIMITS.loraAlpha, true);
  if (o.prior) {
    p.int("class images (prior preservation)", o.prior.images, 1, CONCEPT_LIMITS.classImages);
    p.int("class image DDIM steps", o.prior.steps, 1, CONCEPT_LIMITS.classSteps);
    p.num("class image guidance", o.prior.guidance, 1, CONCEPT_LIMITS.guidanceMax);
  }
  if (o.textualInversion)
    p.num("textual inversion learning rate", o.textualInversion.lr, 0, CONCEPT_LIMITS.lr, true);
  p.int("concept seed", o.seed, 0, CONCEPT_LIMITS.seed);
  p.throwIfAny("concept settings");
  return o;
}

/**
 * The concept cache key: sha256 over the references' content hashes (a set: their order changes nothing
 * learned, see concept.ts), the subject, every resolved setting and the model id. The engine and the
 * queue both key concepts with it.
 */
export function conceptCacheKey(spec: {
  references: readonly string[];
  subject: string;
  options: ConceptOptions;
  modelId: string;
}): string {
  const { options: o } = spec;
  const canonical = JSON.stringify({
    references: [...spec.references].sort(),
    subject: spec.subject,
    // Keys in a fixed order, so the same settings always hash the same.
    options: [
      o.token,
      o.steps,
      o.batch,
      o.lr,
      o.loraRank,
      o.loraAlpha,
      o.prior && [o.prior.images, o.prior.steps, o.prior.guidance],
      o.textualInversion && [o.textualInversion.lr],
      o.seed,
    ],
    modelId: spec.modelId,
  });
  return createHash("sha256").update(canonical).digest("hex");
}
