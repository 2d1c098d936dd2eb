// The engine worker's pipelines for the chat /swap tests (Discord and Slack): concept learning cut to a
// few steps, since those tests check the wiring, not image quality; and a record of what each job
// reported, in order, as the pipeline reported it, with the previews the worker asked for. The chat's
// progress message is edited at most once per interval, so which stages it showed depends on timing; what
// the pipelines reported does not, nor does the first preview (the worker makes one at the first report
// that offers it).
import { StableDiffusion } from "../../src/engine/index.js";
import { enginePipelines } from "../../src/engine/worker/pipelines.js";
import type { JobName } from "../../src/queue/jobs.js";
import type {
  Pipeline,
  PipelineContext,
  PipelineRegistry,
  StartWorkerOptions,
} from "../../src/queue/worker.js";

/** One job that ran a pipeline: its type, the stages it reported (each once, in order), its previews. */
export interface RanJob {
  name: JobName;
  stages: string[];
  previews: Array<{ stage: string; png: Uint8Array }>;
}

function recorded<N extends JobName>(pipeline: Pipeline<N>, ran: RanJob[]): Pipeline<N> {
  return (ctx: PipelineContext<N>) => {
    const job: RanJob = { name: ctx.name, stages: [], previews: [] };
    ran.push(job);
    return pipeline({
      ...ctx,
      progress: (update) => {
        if (job.stages.at(-1) !== update.stage) job.stages.push(update.stage);
        const { preview } = update;
        if (!preview) return ctx.progress(update);
        return ctx.progress({
          ...update,
          preview: async () => {
            const png = await preview();
            job.previews.push({ stage: update.stage, png });
            return png;
          },
        });
      },
    });
  };
}

function swapTestPipelines(sd: StableDiffusion): { pipelines: PipelineRegistry; ran: RanJob[] } {
  const {
    "swap.concept": concept,
    "swap.edit": edit,
    ...rest
  } = enginePipelines(sd, {
    swap: { concept: { steps: 2, prior: { images: 1, steps: 2 } } },
  });
  if (!concept || !edit) throw new Error("the engine has no Photoswap pipelines");
  const ran: RanJob[] = [];
  return {
    pipelines: { ...rest, "swap.concept": recorded(concept, ran), "swap.edit": recorded(edit, ran) },
    ran,
  };
}

/** What the chat swap tests need of a bot test world (Discord's and Slack's both have it). */
interface ChatWorld {
  startBot(): Promise<unknown>;
  worker(
    pipelines: PipelineRegistry,
    options?: Partial<Omit<StartWorkerOptions, "pipelines">>,
  ): Promise<void>;
  close(): Promise<void>;
}

const MODEL = new URL("../fixtures/models/sd1/model", import.meta.url).pathname;

/**
 * A chat world with its bot started and one worker on the sd1 fixture's swap pipelines (concept learning
 * and a swap take tens of seconds on CPU: long locks, so a busy worker is not taken for a stalled one).
 */
export async function swapEngineWorld<W extends ChatWorld>(
  open: () => Promise<W>,
): Promise<{ w: W; ran: RanJob[]; close(): Promise<void> }> {
  const sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  const w = await open();
  await w.startBot();
  const { pipelines, ran } = swapTestPipelines(sd);
  await w.worker(pipelines, { lockDurationMs: 60_000, stalledIntervalMs: 30_000 });
  return {
    w,
    ran,
    close: async () => {
      await w.close();
      await sd.release();
    },
  };
}
