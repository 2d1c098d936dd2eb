/**
 * What the pipeline benchmarks (`bench imagic`, `bench photoswap`) share: their engine flags and
 * `--steps-scale`, and a run — the random-weight SD 1.5 (or tiny) checkpoint they load (one folder per
 * kind and native side for both, written once), the GPU-memory sampler, its lines and the JSON file.
 */
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type Command, Option } from "commander";
import { StableDiffusion, type TrainingSessions } from "../../engine/index.js";
import { cudaOptionsStatus } from "../../engine/runtime/index.js";
import { UserFacingError } from "../../errors.js";
import { benchDeviceOption, benchTrainDtypeOption, type TrainDtypeFlag } from "../options.js";
import { GpuMemorySampler } from "./gpu-memory.js";
import { randomCheckpoint } from "./random-checkpoint.js";
import { cudaOptionsLine, keyValue, sd15Shapes, tinyShapes } from "./sd.js";

export interface PipelineBenchFlags {
  device: "auto" | "cpu" | "webgpu" | "cuda";
  dtype: "auto" | "fp32" | "fp16";
  trainDtype: TrainDtypeFlag;
  stepsScale: string;
  tiny: boolean;
  json?: string;
  modelDir?: string;
  cudaOption: Record<string, string>;
  /** bench imagic's --training-sessions (the other benches train no Imagic stages). */
  trainingSessions?: TrainingSessions;
}

/** Adds --device, --dtype, --train-dtype, --steps-scale, --tiny, --json and --model-dir. */
export function pipelineBenchOptions(command: Command): Command {
  return command
    .addOption(benchDeviceOption())
    .addOption(
      new Option("--dtype <dtype>", "UNet compute dtype for sampling (auto: fp16 on a GPU)")
        .choices(["auto", "fp32", "fp16"])
        .default("auto"),
    )
    .addOption(benchTrainDtypeOption())
    .option("--steps-scale <f>", "run this fraction of each stage's steps (≥ 5 each) and extrapolate", "1")
    .option("--tiny", "toy-width networks at 64² (a CPU smoke run of the whole path)", false)
    .option("--json <file>", "also write the results as JSON")
    .option("--model-dir <dir>", "where to write the random-weight checkpoint (default: the temp folder)")
    .option(
      "--cuda-option <key=value>",
      "CUDA provider option over the engine's defaults (repeatable), e.g. prefer_nhwc=0",
      keyValue,
      {},
    );
}

/** --steps-scale as a number in (0, 1]. */
export function parseStepsScale(f: PipelineBenchFlags): number {
  const scale = Number(f.stepsScale);
  if (!(scale > 0 && scale <= 1))
    throw new UserFacingError(`--steps-scale must be in (0, 1], got ${f.stepsScale}`);
  return scale;
}

/**
 * One benchmark run: the GPU-memory sampler (started first, so loading is booked to "load"), the
 * random-weight model, and the JSON result, written after every part so a run cut short (device time
 * limit) keeps what it measured. `close()` stops the sampler (its polling child would keep the process
 * alive) and releases the model.
 */
export class BenchRun {
  /** What `--json` gets: the run's head, then what the benchmark adds. */
  readonly result: Record<string, unknown>;
  private constructor(
    readonly name: string,
    readonly f: PipelineBenchFlags,
    readonly sd: StableDiffusion,
    readonly gpu: GpuMemorySampler,
    readonly out: (s: string) => void,
  ) {
    this.result = {
      benchmark: name,
      device: sd.device,
      dtype: f.dtype,
      trainDtype: sd.trainDtype,
      tiny: f.tiny,
      stepsScale: parseStepsScale(f),
    };
  }

  /**
   * Loads the random-weight checkpoint (written on first use). `native`: the image side its UNet's
   * `sample_size` says (default 512, 64 with --tiny); one folder per kind and side, so a run at another
   * side never reuses a checkpoint whose config says another.
   */
  static async open(
    name: string,
    f: PipelineBenchFlags,
    out: (s: string) => void,
    native = f.tiny ? 64 : 512,
  ): Promise<BenchRun> {
    const gpu = new GpuMemorySampler();
    gpu.stage("load");
    const kind = f.tiny ? "tiny" : "sd15";
    const dir = f.modelDir ?? path.join(tmpdir(), `bench-random-${kind}-${native}`);
    out(`random-weight checkpoint in ${dir} (written once, reused by later runs)`);
    const shapes = f.tiny ? tinyShapes(native) : sd15Shapes(native);
    try {
      const sd = await StableDiffusion.load(randomCheckpoint(dir, shapes), {
        device: f.device,
        dtype: f.dtype,
        trainDtype: f.trainDtype,
        cudaOptions: f.cudaOption,
        ...(f.trainingSessions ? { trainingSessions: f.trainingSessions } : {}),
      });
      return new BenchRun(name, f, sd, gpu, out);
    } catch (error) {
      await gpu.stop();
      throw error;
    }
  }

  /** The run's first line: `bench NAME: … shapes, random weights, SIZES, device …, sampling …, …`. */
  describe(sizes: string): string {
    const { f, sd } = this;
    const scale = parseStepsScale(f);
    return (
      `bench ${this.name}: ${f.tiny ? "tiny" : "SD 1.5"} shapes, random weights, ${sizes}, device ${sd.device}, ` +
      `sampling ${f.dtype}, training ${sd.trainDtype}${f.trainingSessions ? ` (${f.trainingSessions} sessions)` : ""}, steps × ${scale}` +
      (scale < 1 ? " (stage times extrapolated from the median step)" : "")
    );
  }

  /** Writes the result, with the GPU memory so far, to --json (where given). */
  save(): void {
    this.result.peakGpuMiB = this.gpu.peak();
    this.result.gpuMiBByStage = this.gpu.byStage();
    const cuda = cudaOptionsStatus();
    this.result.cudaOptions = cuda?.applied;
    this.result.boundRuns = cuda?.boundRuns;
    if (this.f.json) writeFileSync(this.f.json, `${JSON.stringify(this.result, null, 2)}\n`);
  }

  /** The device-wide peak and the per-stage memory so far (nothing where there is no nvidia-smi). */
  memoryLines(indent = ""): void {
    const mib = this.gpu.peak();
    if (mib === undefined) return;
    this.out(`${indent}peak GPU memory so far (nvidia-smi, whole device): ${(mib / 1024).toFixed(1)} GiB`);
    this.out(`${indent}GPU memory by stage (GiB at its start → its peak): ${this.gpu.summary()}`);
  }

  async close(): Promise<void> {
    const cuda = cudaOptionsLine();
    if (cuda) this.out(cuda);
    await this.gpu.stop();
    await this.sd.release();
  }
}
