// The engine's pipelines registry: job type → the pipeline that runs it on the loaded model.
// A type missing here fails with "… is not available yet" (src/queue/worker.ts). Photoswap's two job
// types live in ./photoswap.ts.

import type { JobName, JobResult } from "../../queue/jobs.js";
import type { PipelineContext, PipelineRegistry } from "../../queue/worker.js";
import { getPreset, type ImagicOptions, imagicOptions } from "../../spec/imagic.js";
import { requestedSize } from "../../spec/shape.js";
import { tileToPng } from "../grid.js";
import { loadPhoto, photoArgs } from "../image.js";
import type { StableDiffusion } from "../index.js";
import {
  etaSweep,
  fullGrid,
  type RenderedImage,
  renderImagic,
  seedGrid,
  trainImagic,
} from "../pipelines/imagic.js";
import {
  checkStateFits,
  deserializeState,
  type ImagicState,
  serializeState,
} from "../pipelines/imagic-state.js";
import { type SwapPipelineOptions, swapConcept, swapEditJob } from "./photoswap.js";
import { progressBridge } from "./progress.js";

export interface EnginePipelineOptions {
  /** Images per UNet call when rendering. */
  renderBatch?: number;
  /** Photoswap's engine-side settings (./photoswap.ts). */
  swap?: SwapPipelineOptions;
}

async function storeImages<N extends JobName>(ctx: PipelineContext<N>, images: RenderedImage[]) {
  return Promise.all(
    images.map(async (i) => ({
      seed: i.seed,
      eta: i.eta,
      blobId: await ctx.putBlob(await tileToPng(i), "result"),
    })),
  );
}

/** One η: the seeds side by side (what the user picks from); one seed: its η sweep; else all. */
function gridFor(images: RenderedImage[], etas: number[], seeds: number[]): Promise<Buffer> {
  if (etas.length === 1) return seedGrid(images, etas[0] as number);
  if (seeds.length === 1) return etaSweep(images, seeds[0] as number);
  return fullGrid(images);
}

/** Renders η × seeds from a trained state; stores every image and the grid the user picks from. */
async function renderAndStore<N extends JobName>(
  ctx: PipelineContext<N>,
  sd: StableDiffusion,
  state: ImagicState,
  render: { etas: number[]; seeds: number[]; guidance: number; steps: number },
  progress: ReturnType<typeof progressBridge<N>>,
  options: EnginePipelineOptions,
) {
  const images = await renderImagic(sd, state, {
    ...render,
    batch: options.renderBatch ?? 4,
    onProgress: progress.onProgress,
    signal: ctx.signal,
  });
  await progress.flush();
  return {
    images: await storeImages(ctx, images),
    gridBlobId: await ctx.putBlob(await gridFor(images, render.etas, render.seeds), "result"),
  };
}

function imagicTrain(
  sd: StableDiffusion,
  options: EnginePipelineOptions = {},
): (ctx: PipelineContext<"imagic.train">) => Promise<JobResult<"imagic.train">> {
  return async (ctx) => {
    const o = ctx.payload.options;
    const preset = getPreset(o.preset);
    const overrides: Parameters<typeof imagicOptions>[1] = {};
    if (o.embeddingSteps !== undefined) overrides.embedding = { steps: o.embeddingSteps };
    if (o.finetuneSteps !== undefined) overrides.finetune = { steps: o.finetuneSteps };
    const trainOptions: ImagicOptions = imagicOptions(o.preset, overrides);
    const photo = await ctx.blobs.require(ctx.payload.imageBlobId, "the photo");
    const loaded = await loadPhoto(photo, sd.imageShape, { requested: requestedSize(o) });
    const progress = progressBridge(ctx, () => loaded.shape.content);
    const state = await trainImagic(sd, {
      ...photoArgs(loaded),
      source: loaded.source,
      prompt: ctx.payload.prompt,
      options: trainOptions,
      onProgress: progress.onProgress,
      signal: ctx.signal,
    });
    const stateBytes = serializeState(state);
    // A full fine-tune's state can be GBs: say so, rather than the blob store's bare size limit.
    checkStateFits(state, stateBytes.length, ctx.blobs.limits.maxBytes);
    const stateBlobId = await ctx.putBlob(stateBytes, "state");
    const render = {
      etas: [o.eta ?? preset.gridEta],
      seeds: o.seeds ?? preset.render.seeds,
      guidance: o.guidance ?? preset.render.guidance,
      steps: o.steps ?? preset.render.steps,
    };
    return { stateBlobId, ...(await renderAndStore(ctx, sd, state, render, progress, options)) };
  };
}

function imagicRender(
  sd: StableDiffusion,
  options: EnginePipelineOptions = {},
): (ctx: PipelineContext<"imagic.render">) => Promise<JobResult<"imagic.render">> {
  return async (ctx) => {
    const { etas, seeds, guidance, steps } = ctx.payload;
    const state = deserializeState(
      await ctx.blobs.require(ctx.payload.stateBlobId, "the fine-tuned Imagic state"),
    );
    const progress = progressBridge(ctx, () => state.content);
    return renderAndStore(ctx, sd, state, { etas, seeds, guidance, steps }, progress, options);
  };
}

/** What the engine runs on a loaded model. */
export function enginePipelines(sd: StableDiffusion, options: EnginePipelineOptions = {}): PipelineRegistry {
  return {
    "imagic.train": imagicTrain(sd, options),
    "imagic.render": imagicRender(sd, options),
    "swap.concept": swapConcept(sd, options.swap),
    "swap.edit": swapEditJob(sd, options.swap),
  };
}
