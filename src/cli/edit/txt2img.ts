/**
 * `edit txt2img`: text to image with the configured model (MODEL, default the tiny fixture), written as
 * a PNG. A check that a checkpoint loads and samples end to end, on any device.
 */
import { writeFileSync } from "node:fs";
import { Command } from "commander";
import { appConfig } from "../../config.js";
import { cropImage, tensorToPng } from "../../engine/image.js";
import { StableDiffusion } from "../../engine/index.js";
import { modelLoadOptions } from "../../engine/load-options.js";
import { txt2img } from "../../engine/pipelines/txt2img.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { generationShape, parseSize, type Size } from "../../spec/shape.js";
import { type DeviceFlag, deviceOption } from "../options.js";

const log = childLogger("txt2img");

function int(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new UserFacingError(`${name} must be a whole number in ${min}…${max}, got "${v}"`);
    }
    return n;
  };
}

export function txt2imgCommand(): Command {
  return new Command("txt2img")
    .description("generate an image from a prompt and write it as a PNG")
    .requiredOption("--prompt <text>", "what to draw")
    .requiredOption("--out <file.png>", "where to write the PNG")
    .option("--negative <text>", "negative prompt", "")
    .option(
      "--model <pathOrId>",
      "diffusers folder, hub id or single-file .safetensors/.ckpt (default: MODEL)",
    )
    .option("--seed <n>", "noise seed", int("--seed", 0, 2 ** 32 - 1), 0)
    .option("--steps <n>", "DDIM steps", int("--steps", 1, 1000), 25)
    .option("--guidance <scale>", "classifier-free guidance scale", Number.parseFloat, 7.5)
    .option(
      "--size <size>",
      'a side ("512") or width×height ("768x512"); sampled at the next multiple of the model\'s size multiple and centre-cropped to it (default: the UNet\'s sample_size × 8)',
      (v: string) => parseSize(v, "--size"),
    )
    .addOption(deviceOption())
    .action(
      async (o: {
        prompt: string;
        out: string;
        negative: string;
        model?: string;
        seed: number;
        steps: number;
        guidance: number;
        size?: Size;
        device?: DeviceFlag;
      }) => {
        if (!Number.isFinite(o.guidance) || o.guidance < 0) {
          throw new UserFacingError(`--guidance must be a number ≥ 0, got ${o.guidance}`);
        }
        const config = appConfig();
        const model = o.model ?? config.model;
        if (!o.model && config.modelIsFixture)
          log.warn("MODEL is unset: using the tiny test fixture (its images are noise)");
        const sd = await StableDiffusion.load(model, {
          ...modelLoadOptions(config),
          device: o.device ?? config.engineDevice,
        });
        try {
          const shape = generationShape(sd.imageShape, o.size);
          const { content } = shape;
          const started = performance.now();
          const { image } = await txt2img(sd, {
            prompt: o.prompt,
            negativePrompt: o.negative,
            steps: o.steps,
            guidance: o.guidance,
            seed: o.seed,
            height: shape.height,
            width: shape.width,
            onStep: (i, n) => log.info({ step: i, of: n }, "denoising"),
          });
          const png = await tensorToPng(cropImage(image, shape, content), [3, content.height, content.width]);
          writeFileSync(o.out, png);
          log.info(
            {
              out: o.out,
              width: content.width,
              height: content.height,
              ms: Math.round(performance.now() - started),
            },
            "wrote image",
          );
        } finally {
          await sd.release();
        }
      },
    );
}
