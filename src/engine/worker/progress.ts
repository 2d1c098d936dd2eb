// Pipeline progress on its way to the queue: the engine's callbacks are synchronous, job progress is
// written to Redis (with a PNG preview when there is one).
import type { JobName } from "../../queue/jobs.js";
import type { PipelineContext } from "../../queue/worker.js";
import { tensorToPng } from "../image.js";

/** What a pipeline reports, as the worker forwards it (a stage, a step, maybe a loss and a preview). */
export interface PipelineProgress {
  stage: string;
  step: number;
  total: number;
  loss?: number;
  /** [3, H, W] in [-1, 1], or what makes it when a preview is due (a decode: not made otherwise). */
  preview?: Float32Array | (() => Promise<Float32Array>);
}

/**
 * The engine's callbacks are synchronous; job progress is written to Redis. Reports are chained so
 * they arrive in order without holding up the GPU; `flush` waits for the last one.
 */
export function progressBridge<N extends JobName>(
  ctx: PipelineContext<N>,
  size: () => { height: number; width: number },
) {
  let chain = Promise.resolve();
  const onProgress = (p: PipelineProgress) => {
    const preview = p.preview;
    chain = chain
      .then(() =>
        ctx.progress({
          stage: p.stage,
          step: p.step,
          total: p.total,
          ...(p.loss !== undefined ? { loss: p.loss } : {}),
          ...(preview
            ? {
                preview: async () =>
                  tensorToPng(typeof preview === "function" ? await preview() : preview, [
                    3,
                    size().height,
                    size().width,
                  ]),
              }
            : {}),
        }),
      )
      // After a cancel, progress() throws; the pipeline itself stops at its next signal check.
      .catch((err: unknown) => {
        if (!ctx.signal.aborted) ctx.log.warn({ err }, "progress report failed");
      });
  };
  return { onProgress, flush: () => chain };
}
