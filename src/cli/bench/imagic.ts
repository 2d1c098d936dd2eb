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
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Command, Option } from "commander";
import { type LoraWeights, StableDiffusion } from "../../engine/index.js";
import { renderImagic, seedGrid, trainImagic } from "../../engine/pipelines/imagic.js";
import { deserializeState, serializeState } from "../../engine/pipelines/imagic-state.js";
import { UserFacingError } from "../../errors.js";
import { getPreset, PRESET_NAMES, type PresetName } from "../../spec/imagic.js";
import type { Size } from "../../spec/shape.js";
import { GpuMemorySampler } from "./gpu-memory.js";
import { randomCheckpoint } from "./random-checkpoint.js";
import { formatSize, parseBenchSizes, sd15Shapes, tinyShapes } from "./sd.js";
import { photo, StageClock, scaled } from "./timing.js";

interface Flags {
  device: "auto" | "cpu" | "webgpu" | "cuda";
  dtype: "auto" | "fp32" | "fp16";
  trainDtype: "fp32" | "fp16";
  preset: PresetName | "all";
  stepsScale: string;
  tiny: boolean;
  size?: string;
  batches: string;
  json?: string;
  modelDir?: string;
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
  const state = await trainImagic(sd, {
    image: photo(size.width, size.height),
    height: size.height,
    width: size.width,
    prompt: "a photo of a cat wearing a hat",
    options,
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
  const images = await renderImagic(sd, state, {
    etas: [preset.gridEta],
    seeds,
    guidance: preset.render.guidance,
    steps: renderSteps,
    batch: 4,
    onProgress: (p) => {
      if (p.preview) return;
      clock.mark(p);
      lastStep = performance.now();
    },
  });
  const decodeMs = performance.now() - lastStep;
  const gridMs = await timeGrid(() => seedGrid(images, preset.gridEta));

  /** A stage at its full step count: cold = first step (session build) + the rest at the median; warm = all at the median. */
  const extrapolate = (stage: string, fullSteps: number) => {
    const s = clock.steps(stage);
    if (!s || fullSteps === 0) return { cold: 0, warm: 0, perStep: 0, first: 0, ran: 0 };
    return {
      cold: s.first + (fullSteps - 1) * s.median,
      warm: fullSteps * s.median,
      perStep: s.median,
      first: s.first,
      ran: s.ran,
    };
  };
  const embedding = extrapolate("embedding", full.embedding.steps);
  const finetune = extrapolate("finetune", full.finetune.steps);
  const render = extrapolate("render", preset.render.steps);
  const encodeMs = (state.seconds?.encode ?? 0) * 1000;
  const tail = decodeMs + (gridMs ?? 0);
  const firstGrid = {
    cold: encodeMs + embedding.cold + finetune.cold + render.cold + tail,
    warm: encodeMs + embedding.warm + finetune.warm + render.warm + tail,
  };

  // 4 new variants from the cached state: serialize, reload, render with warm sessions, grid.
  const stateBytes = serializeState(state);
  gpu.stage(`${name}/cached`);
  const c0 = performance.now();
  const reloaded = deserializeState(stateBytes);
  const cacheClock = new StageClock();
  cacheClock.begin("render");
  const variants = await renderImagic(sd, reloaded, {
    etas: [preset.gridEta],
    seeds: [11, 12, 13, 14],
    guidance: preset.render.guidance,
    steps: renderSteps,
    batch: 4,
    onProgress: (p) => cacheClock.mark(p),
  });
  await timeGrid(() => seedGrid(variants, preset.gridEta));
  const cachedMs = performance.now() - c0;
  const cs = cacheClock.steps("render");
  const cachedVariants = cs ? cachedMs + (preset.render.steps - cs.ran) * cs.median : cachedMs;

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
    },
    stateBytes: stateBytes.length,
  };
  const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  out(
    `${name.padEnd(8)} embedding ${full.embedding.steps}×b${full.embedding.batch} ${sec(embedding.warm)} (${embedding.perStep.toFixed(0)} ms/step, first ${sec(embedding.first)})  ` +
      `fine-tune ${full.finetune.steps}×b${full.finetune.batch} ${sec(finetune.warm)} (${finetune.perStep.toFixed(0)} ms/step, first ${sec(finetune.first)})  ` +
      `render 4 seeds × ${preset.render.steps} ${sec(render.warm + tail)} (${render.perStep.toFixed(0)} ms/step)\n` +
      `         photo → first 4-seed grid: ${sec(firstGrid.warm)} warm, ${sec(firstGrid.cold)} cold (incl. session builds);  ` +
      `4 new variants from the cached state: ${sec(cachedVariants)};  state ${(stateBytes.length / 1024 ** 2).toFixed(1)} MiB` +
      (gridMs === undefined ? "  (no sharp here: grid PNGs not timed)" : ""),
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
  return new Command("imagic")
    .description(
      "Imagic on SD 1.5 shapes with random weights: stage times, photo → first grid, cached renders",
    )
    .addOption(
      new Option("--device <device>", "execution provider")
        .choices(["auto", "cpu", "webgpu", "cuda"])
        .default("auto"),
    )
    .addOption(
      new Option("--dtype <dtype>", "UNet compute dtype for sampling (auto: fp16 on a GPU)")
        .choices(["auto", "fp32", "fp16"])
        .default("auto"),
    )
    .addOption(
      new Option("--train-dtype <dtype>", "compute dtype of the training graphs (mixed precision: fp16)")
        .choices(["fp32", "fp16"])
        .default("fp32"),
    )
    .addOption(
      new Option("--preset <name>", "preset to time").choices([...PRESET_NAMES, "all"]).default("all"),
    )
    .option("--steps-scale <f>", "run this fraction of every stage's steps (≥ 5 each) and extrapolate", "1")
    .option("--tiny", "toy-width networks at 64² (a CPU smoke run of the whole path)", false)
    .option(
      "--size <sizes>",
      'image sizes run in turn, comma-separated: a side or width×height, multiples of 64, e.g. "512,512x768" (default 512; 64 with --tiny)',
    )
    .option("--batches <list>", 'timestep batches to time one training step at ("none": skip)', "1,4")
    .option("--json <file>", "also write the results as JSON")
    .option("--model-dir <dir>", "where to write the random-weight checkpoint (default: the temp folder)")
    .action(async (f: Flags) => {
      const scale = Number(f.stepsScale);
      if (!(scale > 0 && scale <= 1))
        throw new UserFacingError(`--steps-scale must be in (0, 1], got ${f.stepsScale}`);
      const side = f.tiny ? 64 : 512;
      const sizes = f.size ? parseBenchSizes(f.size) : [{ width: side, height: side }];
      const batches = f.batches === "none" ? [] : f.batches.split(",").map(Number);
      if (batches.some((b) => !Number.isInteger(b) || b < 1 || b > 16)) {
        throw new UserFacingError(`--batches must list whole numbers from 1 to 16, got ${f.batches}`);
      }
      const out = (s: string) => process.stdout.write(`${s}\n`);
      const shapes = f.tiny ? tinyShapes() : sd15Shapes();
      const gpu = new GpuMemorySampler();
      gpu.stage("load");
      const l0 = performance.now();
      const dir = f.modelDir ?? path.join(tmpdir(), `imagic-bench-${f.tiny ? "tiny" : "sd15"}`);
      out(`random-weight checkpoint in ${dir} (written once, reused by later runs)`);
      let sd: StableDiffusion;
      try {
        sd = await StableDiffusion.load(randomCheckpoint(dir, shapes), {
          device: f.device,
          dtype: f.dtype,
          trainDtype: f.trainDtype,
        });
      } catch (error) {
        await gpu.stop(); // the polling child would keep the process alive
        throw error;
      }
      out(
        `bench imagic: ${f.tiny ? "tiny" : "SD 1.5"} shapes, random weights, ${sizes.map(formatSize).join(" then ")}, device ${sd.device}, sampling ${f.dtype}, ` +
          `training ${f.trainDtype}, steps × ${scale}${scale < 1 ? " (stage times extrapolated from the median step)" : ""}; ` +
          "sessions are built once per shape, so only the first preset to use a batch size pays them (cold)",
      );
      const result: Record<string, unknown> = {
        benchmark: "imagic",
        device: sd.device,
        dtype: f.dtype,
        trainDtype: f.trainDtype,
        tiny: f.tiny,
        stepsScale: scale,
        /** One entry per --size: its presets and, with --batches, its per-batch costs. */
        sizes: [] as Array<Size & { presets: unknown[]; [k: string]: unknown }>,
      };
      // Written after every part, so a run cut short (device time limit) keeps what it measured.
      const save = () => {
        result.peakGpuMiB = gpu.peak();
        result.gpuMiBByStage = gpu.byStage();
        if (f.json) writeFileSync(f.json, `${JSON.stringify(result, null, 2)}\n`);
      };
      const peakLine = () => {
        const mib = gpu.peak();
        // Device-wide and cumulative: sessions of earlier presets stay loaded (run one preset to isolate it).
        if (mib !== undefined) {
          out(`         peak GPU memory so far (nvidia-smi, whole device): ${(mib / 1024).toFixed(1)} GiB`);
          out(`         GPU memory by stage (GiB at its start → its peak): ${gpu.summary()}`);
        }
      };
      try {
        const presets = f.preset === "all" ? [...PRESET_NAMES] : [f.preset];
        for (const size of sizes) {
          const latents = sd.latentSize(size.height, size.width);
          out(`— ${formatSize(size)} (latents ${latents.width}×${latents.height})`);
          const entry = { ...size, presets: [] as unknown[] };
          (result.sizes as unknown[]).push(entry);
          let lastLora: LoraWeights | undefined;
          for (const p of presets) {
            const { row, lora } = await benchPreset(sd, p, size, scale, out, gpu);
            entry.presets.push(row);
            lastLora = lora ?? undefined;
            peakLine();
            save();
          }
          gpu.stage(`${formatSize(size)} batches`);
          if (batches.length > 0) Object.assign(entry, await benchBatches(sd, size, batches, lastLora, out));
          save();
        }
        result.totalMs = performance.now() - l0;
        peakLine();
        save();
      } finally {
        await gpu.stop();
        await sd.release();
      }
    });
}
