/**
 * `bench imagic`: the Imagic pipeline on Stable Diffusion 1.5 shapes with random weights (timings do not
 * depend on weight values), per preset: time per stage, time from the photo to the first 4-seed grid,
 * and time to render 4 new variants from a cached state; plus the cost per sample of a training step at
 * several timestep batches (the case for more timesteps per step instead of more steps). `--size
 * 512,512x768` runs all of it at each image size in turn (square and portrait side by side).
 *
 * `--steps-scale 0.02` runs 2 % of every stage's steps (at least 5) and extrapolates: a stage's time is
 * its first step (session creation and warm-up included) plus (steps − 1) × the median of its later
 * steps. Early stopping is off (a random model's loss says nothing), so times are for full schedules.
 */
import { Command, Option } from "commander";
import type { LoraWeights, StableDiffusion } from "../../engine/index.js";
import { renderImagic, seedGrid, trainImagic } from "../../engine/pipelines/imagic.js";
import { deserializeState, serializeState } from "../../engine/pipelines/imagic-state.js";
import { UserFacingError } from "../../errors.js";
import { getPreset, PRESET_NAMES, type PresetName } from "../../spec/imagic.js";
import type { Size } from "../../spec/shape.js";
import type { GpuMemorySampler } from "./gpu-memory.js";
import {
  BenchRun,
  type PipelineBenchFlags,
  parseStepsScale,
  pipelineBenchOptions,
} from "./pipeline-bench.js";
import { formatSize, parseBenchSizes } from "./sd.js";
import { photo, StageClock, scaled } from "./timing.js";

interface Flags extends PipelineBenchFlags {
  preset: PresetName | "all";
  size?: string;
  batches: string;
  secondJob: boolean;
}

/**
 * A grid as the bot would post it, timed; undefined where sharp is not available (the GPU bundle leaves
 * it out, scripts/gpu-bundle.sh): grids are a CPU cost, timed on the CPU machine.
 */
async function timeGrid(make: () => Promise<Buffer>): Promise<number | undefined> {
  const t0 = performance.now();
  try {
    await make();
    return performance.now() - t0;
  } catch {
    return undefined;
  }
}

async function benchPreset(
  sd: StableDiffusion,
  name: PresetName,
  size: Size,
  scale: number,
  out: (s: string) => void,
  gpu: GpuMemorySampler,
  secondJob: boolean,
) {
  const preset = getPreset(name);
  const full = preset.train;
  const options = {
    ...full,
    embedding: { ...full.embedding, steps: scaled(full.embedding.steps, scale) },
    finetune: { ...full.finetune, steps: scaled(full.finetune.steps, scale) },
    earlyStop: null,
  };
  const renderSteps = scaled(preset.render.steps, scale);
  const clock = new StageClock();
  clock.begin("encode");
  const stage = (s: string) => gpu.stage(`${formatSize(size)} ${name}/${s}`);
  stage("encode");
  const job = {
    image: photo(size.width, size.height),
    height: size.height,
    width: size.width,
    prompt: "a photo of a cat wearing a hat",
    options,
  };
  const grid = (seeds: number[], onProgress?: Parameters<typeof renderImagic>[2]["onProgress"]) => ({
    etas: [preset.gridEta],
    seeds,
    guidance: preset.render.guidance,
    steps: renderSteps,
    batch: 4,
    ...(onProgress ? { onProgress } : {}),
  });
  const state = await trainImagic(sd, {
    ...job,
    onProgress: (p) => {
      if (p.stage === "encode" && p.step === 1) {
        clock.begin("embedding");
        stage("embedding");
      } else if (p.stage !== "encode") clock.mark(p);
      if (p.stage === "embedding" && p.step === p.total) {
        clock.begin("finetune");
        stage("finetune");
      }
    },
  });
  const seeds = [1, 2, 3, 4];
  let lastStep = 0;
  clock.begin("render");
  stage("render");
  const images = await renderImagic(
    sd,
    state,
    grid(seeds, (p) => {
      if (p.preview) return;
      clock.mark(p);
      lastStep = performance.now();
    }),
  );
  const decodeMs = performance.now() - lastStep;
  const gridMs = await timeGrid(() => seedGrid(images, preset.gridEta));

  const embedding = clock.extrapolate("embedding", full.embedding.steps);
  const finetune = clock.extrapolate("finetune", full.finetune.steps);
  const render = clock.extrapolate("render", preset.render.steps);
  const encodeMs = (state.seconds?.encode ?? 0) * 1000;
  const tail = decodeMs + (gridMs ?? 0);
  const firstGrid = {
    cold: encodeMs + embedding.cold + finetune.cold + render.cold + tail,
    warm: encodeMs + embedding.warm + finetune.warm + render.warm + tail,
  };

  // 4 new variants from the cached state: serialize, reload, render with warm sessions, grid.
  const stateBytes = serializeState(state);
  gpu.stage(`${formatSize(size)} ${name}/cached`);
  const c0 = performance.now();
  const reloaded = deserializeState(stateBytes);
  const cacheClock = new StageClock();
  cacheClock.begin("render");
  const variants = await renderImagic(
    sd,
    reloaded,
    grid([11, 12, 13, 14], (p) => cacheClock.mark(p)),
  );
  await timeGrid(() => seedGrid(variants, preset.gridEta));
  const cachedMs = performance.now() - c0;
  const cs = cacheClock.steps("render");
  const cachedVariants = cs ? cachedMs + (preset.render.steps - cs.ran) * cs.median : cachedMs;

  // The whole job again in this worker, timed end to end: what a user's second photo waits for. The first
  // job's "warm" adds up stage times, but its encode and decode still built their sessions.
  let secondJobMs: number | undefined;
  if (secondJob) {
    gpu.stage(`${formatSize(size)} ${name}/second job`);
    const j0 = performance.now();
    const again = await trainImagic(sd, job);
    await timeGrid(async () => seedGrid(await renderImagic(sd, again, grid(seeds)), preset.gridEta));
    secondJobMs = performance.now() - j0;
  }

  const row = {
    preset: name,
    steps: { embedding: full.embedding.steps, finetune: full.finetune.steps, render: preset.render.steps },
    ran: { embedding: embedding.ran, finetune: finetune.ran, render: render.ran },
    batch: {
      embedding: full.embedding.batch,
      finetune: full.finetune.batch,
      loraRank: full.finetune.loraRank,
    },
    ms: {
      encode: encodeMs,
      embedding,
      finetune,
      render,
      decode: decodeMs,
      grid: gridMs,
      firstGrid,
      cachedVariants,
      ...(secondJobMs === undefined ? {} : { secondJob: secondJobMs }),
    },
    stateBytes: stateBytes.length,
    // Each stage's first and last loss: runs of one seed on one model compare (e.g. two builds, A/B).
    losses: {
      embedding: [state.losses.embedding[0], state.losses.embedding.at(-1)],
      finetune: [state.losses.finetune[0], state.losses.finetune.at(-1)],
    },
  };
  const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const loss = (l: (number | undefined)[]) => l.map((v) => v?.toFixed(5) ?? "-").join(" → ");
  out(
    `${name.padEnd(8)} embedding ${full.embedding.steps}×b${full.embedding.batch} ${sec(embedding.warm)} (${embedding.perStep.toFixed(0)} ms/step, first ${sec(embedding.first)})  ` +
      `fine-tune ${full.finetune.steps}×b${full.finetune.batch} ${sec(finetune.warm)} (${finetune.perStep.toFixed(0)} ms/step, first ${sec(finetune.first)})  ` +
      `render 4 seeds × ${preset.render.steps} ${sec(render.warm + tail)} (${render.perStep.toFixed(0)} ms/step)\n` +
      `         loss: embedding ${loss(row.losses.embedding)}, fine-tune ${loss(row.losses.finetune)}\n` +
      `         photo → first 4-seed grid: ${sec(firstGrid.warm)} warm, ${sec(firstGrid.cold)} cold (incl. session builds);  ` +
      `4 new variants from the cached state: ${sec(cachedVariants)};  state ${(stateBytes.length / 1024 ** 2).toFixed(1)} MiB` +
      (gridMs === undefined ? "  (no sharp here: grid PNGs not timed)" : "") +
      (secondJobMs === undefined
        ? ""
        : `\n         the same job again in this worker, photo → first 4-seed grid, measured end to end: ${sec(secondJobMs)}` +
          (scale < 1 ? ` (steps × ${scale}: not a full job)` : "")),
  );
  return { row, lora: state.lora };
}

/** Median of runs 2…5 of `fn` (the first builds the session), and the first run. */
async function timeRuns(fn: () => Promise<unknown>): Promise<{ firstMs: number; medianMs: number }> {
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s0 = performance.now();
    await fn();
    times.push(performance.now() - s0);
  }
  const steady = times.slice(1).sort((x, y) => x - y);
  return { firstMs: times[0] as number, medianMs: steady[Math.floor(steady.length / 2)] as number };
}

/**
 * Cost per item at several batches: a training step (the embedding gradient) per timestep, and a guided
 * sampling step per image (each image is 2 UNet items with classifier-free guidance).
 */
async function benchBatches(
  sd: StableDiffusion,
  size: Size,
  batches: number[],
  lora: LoraWeights | undefined,
  out: (s: string) => void,
) {
  const ls = sd.latentSize(size.height, size.width);
  const per = sd.latentChannels * ls.height * ls.width;
  const context = await sd.encodeText(["a photo of a cat"]);
  const training = [];
  for (const b of batches) {
    const latents0 = new Float32Array(b * per).fill(0.1);
    const noise = new Float32Array(b * per).map((_, i) => Math.sin(i));
    const t = Array.from({ length: b }, (_, i) => 100 + ((i * 211) % 800));
    const r = await timeRuns(() =>
      sd.lossAndGrads({ latents0, size: ls, noise, t, context, wrt: ["context"] }),
    );
    training.push({ batch: b, ...r, perSampleMs: r.medianMs / b });
    out(
      `embedding step, ${b} timestep(s): ${r.medianMs.toFixed(0)} ms (${(r.medianMs / b).toFixed(0)} ms per timestep)`,
    );
  }
  const sampling = [];
  for (const images of [1, 4]) {
    const latents = new Float32Array(2 * images * per).map((_, i) => Math.cos(i));
    const contexts = new Float32Array(2 * images * context.length);
    for (let i = 0; i < 2 * images; i++) contexts.set(context, i * context.length);
    // With the presets' LoRA, so the 4-image shape reuses the session the renders built.
    const r = await timeRuns(() => sd.predictNoise(latents, ls, 500, contexts, { lora }));
    sampling.push({ images, ...r, perImageMs: r.medianMs / images });
    out(
      `guided sampling step, ${images} image(s): ${r.medianMs.toFixed(0)} ms (${(r.medianMs / images).toFixed(0)} ms per image)`,
    );
  }
  return { training, sampling };
}

export function imagicBenchCommand(): Command {
  return pipelineBenchOptions(
    new Command("imagic").description(
      "Imagic on SD 1.5 shapes with random weights: stage times, photo → first grid, cached renders",
    ),
  )
    .addOption(
      new Option("--preset <name>", "preset to time").choices([...PRESET_NAMES, "all"]).default("all"),
    )
    .option(
      "--size <sizes>",
      'image sizes run in turn, comma-separated: a side or width×height, multiples of 64, e.g. "512,512x768" (default 512; 64 with --tiny)',
    )
    .option("--batches <list>", 'timestep batches to time one training step at ("none": skip)', "1,4")
    .addOption(
      new Option("--training-sessions <mode>", "Imagic's training sessions (ENGINE_TRAINING_SESSIONS)")
        .choices(["shared", "per-stage"])
        .default("shared"),
    )
    .option(
      "--second-job",
      "after the first job, run the same photo → first grid again in this worker and time it end to end",
      false,
    )
    .action(async (f: Flags) => {
      const scale = parseStepsScale(f);
      const side = f.tiny ? 64 : 512;
      const sizes = f.size ? parseBenchSizes(f.size) : [{ width: side, height: side }];
      const batches = f.batches === "none" ? [] : f.batches.split(",").map(Number);
      if (batches.some((b) => !Number.isInteger(b) || b < 1 || b > 16)) {
        throw new UserFacingError(`--batches must list whole numbers from 1 to 16, got ${f.batches}`);
      }
      const out = (s: string) => process.stdout.write(`${s}\n`);
      const l0 = performance.now();
      const run = await BenchRun.open("imagic", f, out);
      const { sd, gpu, result } = run;
      out(
        `${run.describe(sizes.map(formatSize).join(" then "))}; ` +
          "sessions are built once per shape (each size starts with none), so only the first preset to use a batch size pays them (cold)",
      );
      /** One entry per --size: its presets, its peak GPU memory and, with --batches, its per-batch costs. */
      const entries: Array<Size & { presets: unknown[]; peakGpuMiB?: number; [k: string]: unknown }> = [];
      result.sizes = entries;
      const save = () => run.save();
      // Device-wide and cumulative: sessions of earlier presets stay loaded (run one preset to isolate it).
      const peakLine = () => run.memoryLines("         ");
      try {
        const presets = f.preset === "all" ? [...PRESET_NAMES] : [f.preset];
        for (const [k, size] of sizes.entries()) {
          // Each size starts without sessions: its cold times include its own session builds, and the
          // previous size's GPU memory is given back (a session's arena only grows while it lives; two
          // sizes' sessions at once would measure, and may exhaust, more memory than either job needs).
          if (k > 0) await sd.release();
          const label = formatSize(size);
          const latents = sd.latentSize(size.height, size.width);
          out(`— ${label} (latents ${latents.width}×${latents.height})`);
          const entry: (typeof entries)[number] = { ...size, presets: [] };
          entries.push(entry);
          let lastLora: LoraWeights | undefined;
          for (const p of presets) {
            const { row, lora } = await benchPreset(sd, p, size, scale, out, gpu, f.secondJob);
            entry.presets.push(row);
            lastLora = lora ?? undefined;
            peakLine();
            save();
          }
          gpu.stage(`${label} batches`);
          if (batches.length > 0) Object.assign(entry, await benchBatches(sd, size, batches, lastLora, out));
          const own = gpu.byStage().filter((s) => s.stage.startsWith(`${label} `));
          if (own.length > 0) {
            entry.peakGpuMiB = Math.max(...own.map((s) => s.peakMiB));
            out(
              `         peak GPU memory at ${label} (whole device): ${(entry.peakGpuMiB / 1024).toFixed(1)} GiB`,
            );
          }
          save();
        }
        result.totalMs = performance.now() - l0;
        peakLine();
        save();
      } finally {
        await run.close();
      }
    });
}
