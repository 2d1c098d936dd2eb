/**
 * `edit txt2img`: text to image with the configured model (MODEL, default the tiny fixture), written as
 * a PNG. A check that a checkpoint loads and samples end to end, on any device.
 */
import { writeFileSync } from "node:fs";
import { Command } from "commander";
import { appConfig } from "../../config.js";
import { tensorToPng } from "../../engine/image.js";
import { StableDiffusion } from "../../engine/index.js";
import { modelLoadOptions } from "../../engine/load-options.js";
import { txt2img } from "../../engine/pipelines/txt2img.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
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
    .option("--model <pathOrId>", "diffusers folder or hub id (default: MODEL)")
    .option("--seed <n>", "noise seed", int("--seed", 0, 2 ** 32 - 1), 0)
    .option("--steps <n>", "DDIM steps", int("--steps", 1, 1000), 25)
    .option("--guidance <scale>", "classifier-free guidance scale", Number.parseFloat, 7.5)
    .option("--size <pixels>", "image side (default: the UNet's sample_size × 8)", int("--size", 8, 4096))
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
        size?: number;
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
          const size = o.size ?? sd.nativeSize.width;
          if (size % sd.vaeScale !== 0) {
            throw new UserFacingError(
              `--size must be a multiple of ${sd.vaeScale} for this model, got ${size}`,
            );
          }
          const started = performance.now();
          const { image } = await txt2img(sd, {
            prompt: o.prompt,
            negativePrompt: o.negative,
            steps: o.steps,
            guidance: o.guidance,
            seed: o.seed,
            height: size,
            width: size,
            onStep: (i, n) => log.info({ step: i, of: n }, "denoising"),
          });
          writeFileSync(o.out, await tensorToPng(image, [3, size, size]));
          log.info({ out: o.out, size, ms: Math.round(performance.now() - started) }, "wrote image");
        } finally {
          await sd.release();
        }
      },
    );
}
