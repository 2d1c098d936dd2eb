// Job types that travel through the queue: their payload and result schemas, and the limits on them.
// Payloads carry blob ids (see blobs.ts), never bytes and never local paths, so any engine host can
// run any job.
import { z } from "zod";
import { LIMITS, PRESET_NAMES, type PresetName } from "../spec/imagic.js";
import { MAX_PROMPT_LENGTH, MAX_SEED, MAX_SEEDS, MAX_SUBJECT_LENGTH } from "../spec/request.js";
import { refineRequestedSize, requestedSizeFields } from "../spec/shape.js";
import {
  DEFAULT_CONCEPT_TOKEN,
  MAX_REFERENCES,
  MIN_REFERENCES,
  PAPER_STRENGTHS,
  SWAP_GUIDANCE,
  SWAP_LIMITS,
  SWAP_SAMPLING_STEPS,
  SWAP_STRENGTHS,
  subjectProblem,
} from "../spec/swap.js";

export const JOB_NAMES = ["imagic.train", "imagic.render", "swap.concept", "swap.edit"] as const;
export type JobName = (typeof JOB_NAMES)[number];

/** Largest serialized payload accepted at enqueue (a job spec is ids and options, never data). */
export const MAX_PAYLOAD_BYTES = 16 * 1024;

/** A blob id: the lowercase hex sha256 of the blob's bytes. */
export const blobId = z.string().regex(/^[0-9a-f]{64}$/, "must be a blob id (64 hex characters)");

const chatId = z.string().min(1).max(128);

/** Where a job came from, so the bot that posted it can answer in the same place. */
const chatOrigin = z.object({
  platform: z.enum(["discord", "slack", "console"]),
  channel: chatId,
  thread: chatId.optional(),
  message: chatId.optional(),
});
export type ChatOrigin = z.infer<typeof chatOrigin>;

const seed = z.number().int().min(0).max(MAX_SEED);
const prompt = z.string().trim().min(1).max(MAX_PROMPT_LENGTH);
const subject = z.string().trim().min(1).max(MAX_SUBJECT_LENGTH);
const guidance = z.number().min(1).max(30);
const samplingSteps = z.number().int().min(1).max(150);

const base = {
  userId: chatId,
  origin: chatOrigin,
};

// Imagic's own limits and presets (src/spec/imagic.ts) bound these fields, so a
// request the engine would refuse is refused at enqueue, before it waits in line.
const eta = z.number().min(LIMITS.etaMin).max(LIMITS.etaMax);
const imagicSeeds = z.array(seed).min(1).max(LIMITS.seeds);
const stageSteps = z.number().int().min(0).max(LIMITS.steps);

const imagicTrainPayload = z.strictObject({
  ...base,
  imageBlobId: blobId,
  /** The target text: what the photo should show after the edit. */
  prompt,
  options: z
    .strictObject({
      preset: z.enum(PRESET_NAMES as [PresetName, ...PresetName[]]).default("balanced"),
      embeddingSteps: stageSteps.optional(),
      finetuneSteps: stageSteps.optional(),
      /**
       * A working size forced in pixels (both or neither; src/spec/shape.ts): the photo covers it,
       * centre-cropped. Unset: the photo's own aspect ratio at the model's pixel count.
       */
      ...requestedSizeFields,
      /** The first grid: one tile per seed at `eta` (the preset's when unset). */
      seeds: imagicSeeds.max(MAX_SEEDS).optional(),
      eta: eta.optional(),
      guidance: guidance.optional(),
      steps: samplingSteps.optional(),
    })
    .superRefine(refineRequestedSize)
    .default({ preset: "balanced" }),
});

const imagicRenderPayload = z
  .strictObject({
    ...base,
    /** A serialized Imagic state written by an `imagic.train` job. */
    stateBlobId: blobId,
    seeds: imagicSeeds,
    etas: z.array(eta).min(1).max(LIMITS.etas),
    guidance: guidance.default(7.5),
    steps: samplingSteps.default(50),
  })
  .refine((p) => p.seeds.length * p.etas.length <= LIMITS.images, {
    message: `seeds × η values must be at most ${LIMITS.images} images`,
    path: ["etas"],
  });

const referenceBlobIds = z.array(blobId).min(MIN_REFERENCES).max(MAX_REFERENCES);
const strengthSteps = z.number().int().min(0).max(SWAP_LIMITS.strengthSteps);
const swapDefaults = {
  seeds: [0, 1, 2, 3],
  guidance: SWAP_GUIDANCE,
  steps: SWAP_SAMPLING_STEPS,
  ...PAPER_STRENGTHS,
};

const swapConceptPayload = z.strictObject({
  ...base,
  referenceBlobIds,
  subject,
  options: z
    .strictObject({
      steps: z.number().int().min(1).max(SWAP_LIMITS.conceptSteps).optional(),
      seed: seed.default(0),
    })
    .default({ seed: 0 }),
});

const swapEditPayload = z.strictObject({
  ...base,
  sourceBlobId: blobId,
  /** The concept to swap in: learned from these references (or taken from the cache, see client.ts). */
  referenceBlobIds,
  /**
   * One word: the engine describes the photo as "a photo of a <subject>" and finds the subject as a word
   * of it, so a phrase would be refused only after its swap.concept child had learned the concept (as
   * would "a", "photo", "of" and the concept token: spec/swap.ts subjectProblem).
   */
  subject: subject.superRefine((word, ctx) => {
    // What chat refuses (its concept is learned with the default token), from the same definition.
    const problem = subjectProblem(word, DEFAULT_CONCEPT_TOKEN);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  }),
  /** Filled in at enqueue when the concept is already cached; otherwise the swap.concept child's result. */
  conceptBlobId: blobId.optional(),
  conceptOptions: swapConceptPayload.shape.options,
  options: z
    .strictObject({
      seeds: z.array(seed).min(1).max(MAX_SEEDS).default(swapDefaults.seeds),
      guidance: guidance.default(swapDefaults.guidance),
      steps: z.number().int().min(1).max(SWAP_LIMITS.samplingSteps).default(swapDefaults.steps),
      /** Photoswap's attention-swap steps (src/spec/swap.ts; paper: λφ=10, λM=25, λA=20 of 50). */
      selfOutputSteps: strengthSteps.default(swapDefaults.selfOutputSteps),
      selfMapSteps: strengthSteps.default(swapDefaults.selfMapSteps),
      crossMapSteps: strengthSteps.default(swapDefaults.crossMapSteps),
      /**
       * The source photo's working size, forced as imagic.train's is (src/spec/shape.ts); unset: the
       * photo's own aspect ratio. The references are not affected: concepts learn at the model's square.
       */
      ...requestedSizeFields,
      /** Several strengths (one grid row each): when given, replaces the three above. */
      strengths: z
        .array(
          z.strictObject({
            selfOutputSteps: strengthSteps,
            selfMapSteps: strengthSteps,
            crossMapSteps: strengthSteps,
          }),
        )
        .min(1)
        .max(SWAP_LIMITS.variants)
        .optional(),
    })
    .default(swapDefaults)
    .superRefine((o, ctx) => {
      refineRequestedSize(o, ctx);
      for (const [i, strengths] of (o.strengths ?? [o]).entries()) {
        for (const s of SWAP_STRENGTHS) {
          if (strengths[s.key] > o.steps) {
            ctx.addIssue({
              code: "custom",
              path: o.strengths ? ["strengths", i, s.key] : [s.key],
              message: `${s.name} counts sampling steps: at most steps (${o.steps}), got ${strengths[s.key]}`,
            });
          }
        }
      }
      const variants = o.seeds.length * (o.strengths?.length ?? 1);
      if (variants > SWAP_LIMITS.variants) {
        ctx.addIssue({
          code: "custom",
          path: ["strengths"],
          message: `seeds × strengths must be at most ${SWAP_LIMITS.variants} variants, got ${variants}`,
        });
      }
    }),
});

export const payloadSchemas = {
  "imagic.train": imagicTrainPayload,
  "imagic.render": imagicRenderPayload,
  "swap.concept": swapConceptPayload,
  "swap.edit": swapEditPayload,
} as const;

/** What a caller passes to `enqueue` (defaults not yet applied). */
export type JobInput<N extends JobName> = z.input<(typeof payloadSchemas)[N]>;
/** What a processor receives (validated, defaults applied). */
export type JobPayload<N extends JobName> = z.output<(typeof payloadSchemas)[N]>;

const renderedImage = z.object({ seed, eta: z.number(), blobId });
export type RenderedImage = z.infer<typeof renderedImage>;

export const resultSchemas = {
  "imagic.train": z.object({ stateBlobId: blobId, images: z.array(renderedImage), gridBlobId: blobId }),
  "imagic.render": z.object({ images: z.array(renderedImage), gridBlobId: blobId }),
  "swap.concept": z.object({ conceptBlobId: blobId }),
  "swap.edit": z.object({
    /** Each variant; `label` names it (seed and strengths) where the user picks. */
    images: z.array(z.object({ seed, blobId, label: z.string().max(100).optional() })),
    gridBlobId: blobId,
  }),
} as const;
export type JobResult<N extends JobName> = z.infer<(typeof resultSchemas)[N]>;

/** `job.updateProgress` payload (CONTRACTS.md §5). */
const jobProgress = z.object({
  stage: z.string(),
  step: z.number().int().min(0),
  total: z.number().int().min(0),
  etaSeconds: z.number().min(0).optional(),
  loss: z.number().optional(),
  previewBlobId: blobId.optional(),
});
export type JobProgress = z.infer<typeof jobProgress>;

export function isJobName(name: string): name is JobName {
  return (JOB_NAMES as readonly string[]).includes(name);
}

/** A blob a payload refers to, with the words a user knows it by (for "… has expired" messages). */
export interface BlobRef {
  id: string;
  label: string;
}

const references = (ids: readonly string[]): BlobRef[] =>
  ids.map((id, i) => ({ id, label: `reference photo ${i + 1}` }));

const BLOB_REFS: { [N in JobName]: (payload: JobPayload<N>) => BlobRef[] } = {
  "imagic.train": (p) => [{ id: p.imageBlobId, label: "the photo" }],
  "imagic.render": (p) => [{ id: p.stateBlobId, label: "the fine-tuned Imagic state" }],
  "swap.concept": (p) => references(p.referenceBlobIds),
  "swap.edit": (p) => [
    { id: p.sourceBlobId, label: "the source photo" },
    ...references(p.referenceBlobIds),
    ...(p.conceptBlobId ? [{ id: p.conceptBlobId, label: "the learned concept" }] : []),
  ],
};

/** Blobs a payload refers to: they must exist at enqueue and outlive the wait in the queue. */
export function referencedBlobs<N extends JobName>(name: N, payload: JobPayload<N>): BlobRef[] {
  return (BLOB_REFS[name] as (p: JobPayload<N>) => BlobRef[])(payload);
}
