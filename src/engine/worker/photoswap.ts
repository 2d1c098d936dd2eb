// Photoswap's job types on the engine worker: `swap.concept` learns a concept from the reference photos
// (the queue caches its blob by a hash of references, subject and settings), `swap.edit` swaps it into the
// source photo — inversion (kept for the next swap of the same photo), seed × strength variants, images
// and the grid the user picks from.
import type { PipelineContext } from "../../queue/worker.js";
import { requestedSize } from "../../spec/shape.js";
import {
  type ConceptOverrides,
  conceptOptions,
  DEFAULT_CONCEPT_PRESET,
  DEFAULT_INVERSION,
  type InversionMethodName,
  NULL_TEXT_INNER_STEPS,
  SWAP_BATCH,
  SWAP_BLEND_THRESHOLD,
  SWAP_VARIATION,
  sourcePromptFor,
} from "../../spec/swap.js";
import { tileToPng } from "../grid.js";
import { loadPhoto, photoArgs } from "../image.js";
import type { StableDiffusion } from "../index.js";
import { checkConceptModel, learnConcept, loadReferences } from "../pipelines/concept.js";
import { deserializeConcept, serializeConcept } from "../pipelines/concept-file.js";
import { inversionKey, swapEdit, variantGrid, variantLabel } from "../pipelines/photoswap-edit.js";
import type { InvertedSource } from "../pipelines/photoswap-types.js";
import { progressBridge } from "./progress.js";

/** The engine's Photoswap settings (an operator's, or a test's short runs). */
export interface SwapPipelineOptions {
  /**
   * Over the default concept preset (a request's steps and seed come on top). The queue's concept cache
   * key sees only the request's settings (spec/swap.ts, requestedConceptOptions): changing these on a
   * running deployment keeps serving concepts learned before until their blobs expire.
   */
  concept?: ConceptOverrides;
  inversion?: InversionMethodName;
  nullTextInnerSteps?: number;
  /** Variants per UNet call. */
  batch?: number;
  /** Inversions kept for the next swap of the same photo (each a few MB at 512²). */
  keptInversions?: number;
}

export function swapConcept(sd: StableDiffusion, o: SwapPipelineOptions = {}) {
  return async (ctx: PipelineContext<"swap.concept">) => {
    const p = ctx.payload;
    const photos = await Promise.all(
      p.referenceBlobIds.map((id, i) => ctx.blobs.require(id, `reference photo ${i + 1}`)),
    );
    const { images, size } = await loadReferences(sd, photos);
    const options = conceptOptions(DEFAULT_CONCEPT_PRESET, {
      ...o.concept,
      ...(p.options.steps !== undefined ? { steps: p.options.steps } : {}),
      seed: p.options.seed,
    });
    const px = typeof size === "number" ? { height: size, width: size } : size;
    const progress = progressBridge(ctx, () => px);
    const concept = await learnConcept(sd, {
      references: images,
      size,
      subject: p.subject,
      options,
      onProgress: progress.onProgress,
      signal: ctx.signal,
    });
    await progress.flush();
    return { conceptBlobId: await ctx.putBlob(serializeConcept(concept), "state") };
  };
}

export function swapEditJob(sd: StableDiffusion, o: SwapPipelineOptions = {}) {
  // Most recently used last; an inversion does not depend on the concept, so every concept swapped into a
  // photo (and every new variant of it) reuses it.
  const kept = new Map<string, InvertedSource>();
  const keep = (key: string, inv: InvertedSource) => {
    kept.delete(key);
    kept.set(key, inv);
    while (kept.size > (o.keptInversions ?? 4)) kept.delete(kept.keys().next().value as string);
  };
  return async (ctx: PipelineContext<"swap.edit">) => {
    const p = ctx.payload;
    const { options } = p;
    if (!p.conceptBlobId) throw new Error("swap.edit ran without its concept");
    const concept = deserializeConcept(await ctx.blobs.require(p.conceptBlobId, "the learned concept"));
    checkConceptModel(sd, concept);
    // Fitted as Imagic's photo is (src/spec/shape.ts): the requested size, else the photo's own shape.
    const photo = photoArgs(
      await loadPhoto(await ctx.blobs.require(p.sourceBlobId, "the source photo"), sd.imageShape, {
        requested: requestedSize(options),
      }),
    );
    const inversion = o.inversion ?? DEFAULT_INVERSION;
    const nullTextInnerSteps = o.nullTextInnerSteps ?? NULL_TEXT_INNER_STEPS;
    const key = inversionKey({
      ...photo,
      prompt: sourcePromptFor(p.subject),
      steps: options.steps,
      guidance: options.guidance,
      inversion,
      nullTextInnerSteps,
      modelId: sd.modelId,
    });
    const progress = progressBridge(ctx, () => photo.content);
    const result = await swapEdit(sd, {
      ...photo,
      subject: p.subject,
      concept,
      inversion,
      nullTextInnerSteps,
      inverted: kept.get(key),
      steps: options.steps,
      guidance: options.guidance,
      seeds: options.seeds,
      // A list of strengths replaces the three single ones (src/queue/jobs.ts).
      strengths: options.strengths ?? [
        {
          selfOutputSteps: options.selfOutputSteps,
          selfMapSteps: options.selfMapSteps,
          crossMapSteps: options.crossMapSteps,
        },
      ],
      variation: SWAP_VARIATION,
      blendThreshold: SWAP_BLEND_THRESHOLD,
      batch: o.batch ?? SWAP_BATCH,
      onProgress: progress.onProgress,
      signal: ctx.signal,
    });
    keep(key, result.inverted);
    await progress.flush();
    ctx.log.info(
      {
        reusedInversion: result.reusedInversion,
        reconstructionPsnr: result.reconstructionPsnr,
        seconds: result.seconds,
      },
      "swapped",
    );
    const images = await Promise.all(
      result.variants.map(async (v) => ({
        seed: v.seed,
        label: variantLabel(v),
        blobId: await ctx.putBlob(await tileToPng(v), "result"),
      })),
    );
    return { images, gridBlobId: await ctx.putBlob(await variantGrid(result.variants), "result") };
  };
}
