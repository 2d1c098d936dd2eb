// Lightweight pipelines for the queue tests: they do real work on real blobs (decode the photo with
// sharp, write PNG tiles, a grid and a state blob) and report per-step progress with previews, but in
// milliseconds instead of minutes. They stand in for the GPU pipelines only in tests.
import sharp from "sharp";
import type { JobName, JobPayload } from "../../../src/queue/jobs.js";
import type { PipelineContext, PipelineRegistry } from "../../../src/queue/worker.js";

export interface LightweightOptions {
  steps?: number;
  stepMs?: number;
  /** Called when a pipeline starts and when it returns (not when it throws). */
  onRun?: (event: "start" | "finish", name: JobName, jobId: string) => void | Promise<void>;
}

const TILE = 32;

async function tile(source: Buffer, seed: number, eta: number): Promise<Buffer> {
  return sharp(source)
    .resize(TILE, TILE, { fit: "cover" })
    .modulate({ brightness: 0.5 + eta / 2, hue: (seed * 37) % 360 })
    .png()
    .toBuffer();
}

async function grid(tiles: Buffer[]): Promise<Buffer> {
  return sharp({ create: { width: TILE * tiles.length, height: TILE, channels: 3, background: "#000" } })
    .composite(tiles.map((input, i) => ({ input, left: i * TILE, top: 0 })))
    .png()
    .toBuffer();
}

async function sleep(ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => setTimeout(resolve, ms));
  signal.throwIfAborted();
}

export function lightweightPipelines(options: LightweightOptions = {}): PipelineRegistry {
  const steps = options.steps ?? 3;
  const stepMs = options.stepMs ?? 10;

  /** `steps` steps of a named stage with progress, loss and a preview of `image`. */
  async function train<N extends JobName>(
    ctx: PipelineContext<N>,
    stage: string,
    image: Buffer,
  ): Promise<void> {
    for (let step = 1; step <= steps; step++) {
      await sleep(stepMs, ctx.signal);
      await ctx.progress({
        stage,
        step,
        total: steps,
        loss: 1 / step,
        preview: () => tile(image, step, 0.5),
      });
    }
  }

  async function render<N extends JobName>(
    ctx: PipelineContext<N>,
    image: Buffer,
    seeds: number[],
    etas: number[],
  ) {
    const images = [];
    for (const eta of etas) {
      for (const seed of seeds) {
        ctx.signal.throwIfAborted();
        images.push({ seed, eta, blobId: await ctx.putBlob(await tile(image, seed, eta), "result") });
      }
    }
    const tiles = await Promise.all(images.map(async (i) => (await ctx.blobs.get(i.blobId)) as Buffer));
    return { images, gridBlobId: await ctx.putBlob(await grid(tiles), "result") };
  }

  const wrap =
    <N extends JobName>(name: N, run: (ctx: PipelineContext<N>) => Promise<unknown>) =>
    async (ctx: PipelineContext<N>) => {
      await options.onRun?.("start", name, ctx.jobId);
      const result = await run(ctx);
      await options.onRun?.("finish", name, ctx.jobId);
      return result as never;
    };

  return {
    "imagic.train": wrap("imagic.train", async (ctx) => {
      const photo = await ctx.blobs.require(ctx.payload.imageBlobId, "the photo");
      await sharp(photo).metadata(); // a photo that does not decode fails here, as in the real pipeline
      await train(ctx, "embedding", photo);
      await train(ctx, "finetune", photo);
      const state = Buffer.concat([Buffer.from(`${ctx.payload.prompt}\n`), photo]);
      const stateBlobId = await ctx.putBlob(state, "state");
      const seeds = ctx.payload.options.seeds ?? [1, 2];
      return { stateBlobId, ...(await render(ctx, photo, seeds, [ctx.payload.options.eta ?? 1])) };
    }),
    "imagic.render": wrap("imagic.render", async (ctx) => {
      const state = await ctx.blobs.require(ctx.payload.stateBlobId, "the state");
      const photo = state.subarray(state.indexOf(10) + 1);
      await train(ctx, "sampling", photo);
      return render(ctx, photo, ctx.payload.seeds, ctx.payload.etas);
    }),
    "swap.concept": wrap("swap.concept", async (ctx) => {
      const refs = await Promise.all(
        ctx.payload.referenceBlobIds.map((id) => ctx.blobs.require(id, "reference")),
      );
      await train(ctx, "concept", refs[0] as Buffer);
      return { conceptBlobId: await ctx.putBlob(Buffer.concat(refs), "concept") };
    }),
    "swap.edit": wrap("swap.edit", async (ctx) => {
      const source = await ctx.blobs.require(ctx.payload.sourceBlobId, "the source photo");
      await ctx.blobs.require(ctx.payload.conceptBlobId as string, "the concept");
      await train(ctx, "swap", source);
      const { images, gridBlobId } = await render(ctx, source, ctx.payload.options.seeds, [1]);
      return { images: images.map(({ seed, blobId }) => ({ seed, blobId })), gridBlobId };
    }),
  };
}

/** The lightweight swap pipelines, recording each swap.edit job's payload as it starts. */
export function recordedSwapPipelines(): {
  pipelines: PipelineRegistry;
  payloads: Array<JobPayload<"swap.edit">>;
} {
  const { "swap.concept": concept, "swap.edit": edit } = lightweightPipelines();
  if (!concept || !edit) throw new Error("the lightweight pipelines lost a swap pipeline");
  const payloads: Array<JobPayload<"swap.edit">> = [];
  return {
    payloads,
    pipelines: {
      "swap.concept": concept,
      "swap.edit": async (ctx) => {
        payloads.push(ctx.payload);
        return edit(ctx);
      },
    },
  };
}
