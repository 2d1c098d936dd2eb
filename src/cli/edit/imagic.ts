/**
 * `edit imagic`: Imagic on one photo from the command line. Trains (or reuses a saved state), renders every
 * η × seed, and writes each image at full resolution, the grids, the state and a JSON report into --out.
 * Every input is checked before the model is touched, so a bad one costs nothing.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { appConfig } from "../../config.js";
import { tileToPng } from "../../engine/grid.js";
import { loadPhoto, photoArgs, probeImage } from "../../engine/image.js";
import { etaSweep, fullGrid, renderImagic, seedGrid, trainImagic } from "../../engine/pipelines/imagic.js";
import { deserializeState, type ImagicState, serializeState } from "../../engine/pipelines/imagic-state.js";
import { checkPrompt } from "../../engine/pipelines/prompt.js";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import {
  type DeepPartial,
  EARLY_STOP,
  FINETUNE_METHODS,
  type FinetuneMethod,
  FULL_WEIGHTS,
  type FullWeights,
  getPreset,
  type ImagicOptions,
  imagicOptions,
  PRESET_NAMES,
  type PresetName,
  parseNumberList,
  validateRenderOptions,
} from "../../spec/imagic.js";
import { checkPhotoShape, type Size } from "../../spec/shape.js";
import {
  type DeviceFlag,
  type DtypeFlag,
  deviceOption,
  dtypeOption,
  sizeOption,
  type TrainDtypeFlag,
  trainDtypeOption,
} from "../options.js";
import { num, openModel, progressReporter, readInput } from "./shared.js";

const log = childLogger("imagic-cli");

interface Flags {
  image?: string;
  prompt?: string;
  state?: string;
  preset: PresetName;
  eta?: string;
  seeds?: string;
  out: string;
  model?: string;
  device?: DeviceFlag;
  dtype?: DtypeFlag;
  trainDtype?: TrainDtypeFlag;
  size?: Size;
  upscale: boolean;
  embeddingSteps?: string;
  embeddingLr?: string;
  finetuneSteps?: string;
  finetuneLr?: string;
  finetune?: FinetuneMethod;
  fullWeights?: FullWeights;
  batch?: string;
  loraRank?: string;
  loraAlpha?: string;
  trainSeed?: string;
  earlyStop: boolean;
  guidance?: string;
  ddimSteps?: string;
  renderBatch?: string;
}

/** Training overrides from the flags, on top of the preset. */
function trainOverrides(f: Flags): DeepPartial<ImagicOptions> {
  const batch = num("--batch", f.batch);
  if (f.finetune === "full" && (f.loraRank !== undefined || f.loraAlpha !== undefined))
    throw new UserFacingError("--lora-rank and --lora-alpha apply to --finetune lora, not full");
  if (f.fullWeights !== undefined && f.finetune !== "full")
    throw new UserFacingError("--full-weights applies to --finetune full");
  const strip = <T extends object>(o: T): T =>
    Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
  return {
    embedding: strip({
      steps: num("--embedding-steps", f.embeddingSteps),
      lr: num("--embedding-lr", f.embeddingLr),
      batch,
    }),
    finetune: strip({
      method: f.finetune,
      weights: f.fullWeights,
      steps: num("--finetune-steps", f.finetuneSteps),
      lr: num("--finetune-lr", f.finetuneLr),
      batch,
      loraRank: num("--lora-rank", f.loraRank),
      loraAlpha: num("--lora-alpha", f.loraAlpha),
    }),
    ...(f.earlyStop ? { earlyStop: EARLY_STOP } : {}),
    ...(f.trainSeed !== undefined ? { seed: num("--train-seed", f.trainSeed) } : {}),
  };
}

function summary(losses: number[]): { steps: number; first?: number; last?: number } {
  if (losses.length === 0) return { steps: 0 };
  const k = Math.max(1, Math.min(10, Math.floor(losses.length / 4)));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { steps: losses.length, first: mean(losses.slice(0, k)), last: mean(losses.slice(-k)) };
}

export function imagicCommand(): Command {
  return new Command("imagic")
    .description(
      "edit a photo to match a prompt (Imagic): train, render η × seeds, write images, grids, state, report",
    )
    .option("--image <file>", "the photo (JPEG, PNG, WebP, …)")
    .option("--prompt <text>", 'the photo as it should look, e.g. "a photo of a sitting dog"')
    .option(
      "--state <file>",
      "render from a saved state.safetensors instead of training (no --image/--prompt)",
    )
    .addOption(new Option("--preset <name>", "training schedule").choices(PRESET_NAMES).default("balanced"))
    .option("--eta <list>", "edit strengths η, 0–1.5 (default: the preset's sweep 0.6,0.8,1,1.2,1.4)")
    .option("--seeds <list>", "render seeds (default 1,2,3,4)")
    .option("--out <dir>", "output folder", "imagic-out")
    .option(
      "--model <pathOrId>",
      "diffusers folder, hub id or single-file .safetensors/.ckpt (default: MODEL)",
    )
    .addOption(deviceOption())
    .addOption(dtypeOption())
    .addOption(trainDtypeOption())
    .addOption(sizeOption())
    .option(
      "--upscale",
      "write each image at the photo's original size (lanczos3) instead of the working size",
      false,
    )
    .option("--embedding-steps <n>", "stage 1 steps")
    .option("--embedding-lr <lr>", "stage 1 Adam learning rate")
    .option("--finetune-steps <n>", "stage 2 steps (0: no fine-tune)")
    .option(
      "--finetune-lr <lr>",
      "stage 2 Adam learning rate (default: the preset's for LoRA, 2e-6 for full)",
    )
    .addOption(
      new Option(
        "--finetune <method>",
        "stage 2: LoRA adapters, or every UNet weight as the paper does (memory: ENGINE_MAX_TRAIN_BYTES; the state is then fp16 weight deltas, GBs for SD 1.5)",
      ).choices(FINETUNE_METHODS),
    )
    .addOption(
      new Option(
        "--full-weights <which>",
        "with --finetune full: every UNet weight, or the attention blocks' (default all)",
      ).choices(FULL_WEIGHTS),
    )
    .option("--batch <n>", "timesteps per training step, both stages")
    .option("--lora-rank <n>", "LoRA rank")
    .option("--lora-alpha <n>", "LoRA alpha (scale = alpha / rank)")
    .option("--train-seed <n>", "seed of the training timesteps, noise and LoRA init")
    .option(
      "--early-stop",
      "stop a stage once its loss EMA is flat (off by default: unmeasured on real weights)",
      false,
    )
    .option("--guidance <scale>", "classifier-free guidance (default 7.5)")
    .option("--ddim-steps <n>", "DDIM steps per render (default: the preset's)")
    .option("--render-batch <n>", "images per UNet call when rendering", "4")
    .action(async (f: Flags) => {
      const started = performance.now();
      // 1. Everything that can be checked without the model.
      const preset = getPreset(f.preset);
      const render = validateRenderOptions({
        etas: f.eta ? parseNumberList(f.eta, "--eta") : preset.render.etas,
        seeds: f.seeds ? parseNumberList(f.seeds, "--seeds") : preset.render.seeds,
        guidance: num("--guidance", f.guidance) ?? preset.render.guidance,
        steps: num("--ddim-steps", f.ddimSteps) ?? preset.render.steps,
      });
      const renderBatch = num("--render-batch", f.renderBatch) ?? 4;
      if (!Number.isInteger(renderBatch) || renderBatch < 1 || renderBatch > 16) {
        throw new UserFacingError(
          `--render-batch must be a whole number from 1 to 16 (got ${f.renderBatch})`,
        );
      }
      let saved: ImagicState | undefined;
      let imageBytes: Uint8Array | undefined;
      let options: ImagicOptions | undefined;
      if (f.state) {
        if (f.image || f.prompt)
          throw new UserFacingError("--state renders a saved edit: leave out --image and --prompt");
        saved = deserializeState(readInput(f.state, "--state"));
        if (f.size)
          throw new UserFacingError("--size applies to training: a saved state renders at its own size");
        if (f.upscale && !saved.source) {
          throw new UserFacingError("--upscale: this state does not record the photo's original size");
        }
      } else {
        if (!f.image || f.prompt === undefined)
          throw new UserFacingError("give --image and --prompt (or --state)");
        imageBytes = readInput(f.image, "--image");
        const probe = await probeImage(imageBytes).catch((e: Error) => {
          throw new UserFacingError(`--image ${f.image}: ${e.message}`);
        });
        checkPhotoShape(probe, `--image ${f.image}`);
        options = imagicOptions(f.preset, trainOverrides(f));
      }

      // 2. The model (sessions are built lazily: nothing heavy runs before the prompt is checked).
      const { sd, model, fixture } = await openModel({ ...f, savedOn: saved?.modelId });
      const bar = progressReporter(["encode"]);
      try {
        // The last checks, which need the tokenizer; nothing is written before they pass.
        if (!saved) checkPrompt(sd.tokenizer, f.prompt as string);
        mkdirSync(f.out, { recursive: true });
        const loadSeconds = (performance.now() - started) / 1000;
        let state: ImagicState;
        if (saved) {
          state = saved;
        } else {
          const photo = await loadPhoto(imageBytes as Uint8Array, sd.imageShape, { requested: f.size }).catch(
            (e: Error) => {
              throw new UserFacingError(`--image ${f.image}: ${e.message}`);
            },
          );
          state = await trainImagic(sd, {
            ...photoArgs(photo),
            source: photo.source,
            prompt: f.prompt as string,
            options: options as ImagicOptions,
            onProgress: bar.onProgress,
          });
        }
        const stateBytes = serializeState(state);
        if (!saved) writeFileSync(path.join(f.out, "state.safetensors"), stateBytes);
        const renderStart = performance.now();
        const images = await renderImagic(sd, state, {
          ...render,
          batch: renderBatch,
          onProgress: bar.onProgress,
        });
        const renderSeconds = (performance.now() - renderStart) / 1000;
        bar.stop();

        const files: string[] = [];
        const write = (name: string, bytes: Uint8Array) => {
          writeFileSync(path.join(f.out, name), bytes);
          files.push(name);
        };
        const upscaled = f.upscale ? state.source : undefined;
        for (const i of images) write(`eta-${i.eta}-seed-${i.seed}.png`, await tileToPng(i, upscaled));
        write("grid.png", await fullGrid(images));
        for (const eta of render.etas) write(`seeds-eta-${eta}.png`, await seedGrid(images, eta));
        for (const seed of render.seeds) write(`sweep-seed-${seed}.png`, await etaSweep(images, seed));
        const report = {
          model,
          device: sd.device,
          dtype: { sampling: f.dtype ?? appConfig().engineDtype, training: sd.trainDtype },
          prompt: state.prompt,
          workingSize: { width: state.width, height: state.height },
          content: state.content,
          ...(state.source ? { photoSize: state.source } : {}),
          imageSize: upscaled ?? { width: state.content.width, height: state.content.height },
          preset: saved ? undefined : f.preset,
          options: state.options,
          render: { ...render, batch: renderBatch },
          losses: state.losses,
          lossSummary: {
            embedding: summary(state.losses.embedding),
            finetune: summary(state.losses.finetune),
          },
          seconds: {
            load: loadSeconds,
            ...(saved ? {} : state.seconds),
            render: renderSeconds,
            total: (performance.now() - started) / 1000,
          },
          stateBytes: stateBytes.length,
          files,
        };
        write("report.json", new TextEncoder().encode(`${JSON.stringify(report, null, 2)}\n`));
        if (fixture) {
          log.warn("these images come from the tiny TEST checkpoint: expect noise, not an edit");
        }
        process.stdout.write(
          `wrote ${images.length} image${images.length === 1 ? "" : "s"}, grids${saved ? "" : ", state.safetensors"} and report.json to ${f.out} in ${formatSeconds(report.seconds.total)}\n`,
        );
      } finally {
        bar.stop();
        await sd.release();
      }
    });
}
