// What the Imagic pipeline tests share: the tiny SD 1.x fixture on the CPU at 64² (8×8 latents), a
// synthetic photo, and the fast preset at a batch of 2 timesteps, so that the tests share one compiled
// loss session per gradient kind.

import { repeatBatch } from "../../../src/engine/batch.js";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { type DeepPartial, type ImagicOptions, imagicOptions } from "../../../src/spec/imagic.js";

export const MODEL = new URL("../../fixtures/models/sd1/model", import.meta.url).pathname;
export const SIZE = 64;
export const PROMPT = "a photo of a cat wearing a hat";

export function loadFixtureModel(): Promise<StableDiffusion> {
  return StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
}

/** A smooth synthetic "photo" in [-1, 1] (the fixture VAE is random: any image is as good as a real one). */
export function smoothPhoto(): Float32Array {
  const photo = new Float32Array(3 * SIZE * SIZE);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < SIZE; y++) {
      for (let x = 0; x < SIZE; x++)
        photo[(c * SIZE + y) * SIZE + x] = Math.sin((x + 2 * c) / 9) * Math.cos(y / 13);
    }
  }
  return photo;
}

/** trainImagic's photo, size and prompt in these tests: `photo` at SIZE² under PROMPT. */
export function trainingOn(photo: Float32Array) {
  return { image: photo, height: SIZE, width: SIZE, prompt: PROMPT };
}

/** The fast preset without early stopping, batch 2 in both stages, `finetune` under the test's own. */
export function fastOptions(
  o: DeepPartial<ImagicOptions>,
  finetune: DeepPartial<ImagicOptions["finetune"]>,
): ImagicOptions {
  return imagicOptions("fast", {
    earlyStop: null,
    ...o,
    embedding: { batch: 2, ...o.embedding },
    finetune: { ...finetune, batch: 2, ...o.finetune },
  });
}

/**
 * Fixed training draws (timesteps 150 and 600, one noise) for watching the optimizer: on the random
 * fixture the context moves the loss less than the spread between random draws does.
 */
export const FIXED_T = [150, 600];
export const FIXED_NOISE = new GaussianRng(99).normal(FIXED_T.length * 4 * 8 * 8);
export const fixedDraws = { timesteps: () => [...FIXED_T], noise: () => FIXED_NOISE };

/** A training step's draws on the photo: its latents once per fixed timestep, the fixed noise. */
export async function fixedStep(sd: StableDiffusion, photo: Float32Array) {
  const { mean: x0, size } = await sd.encodeImage(photo, SIZE, SIZE);
  return { latents0: repeatBatch(x0, FIXED_T.length), size, noise: FIXED_NOISE, t: FIXED_T };
}

/** The un-tuned UNet's loss on the fixed draws of the photo under `context`, and its context gradient. */
export async function untunedStep(
  sd: StableDiffusion,
  photo: Float32Array,
  context: Float32Array,
): Promise<{ loss: number; dContext: Float32Array }> {
  const { loss, dContext } = await sd.lossAndGrads({
    ...(await fixedStep(sd, photo)),
    context,
    wrt: ["context"],
  });
  if (!dContext) throw new Error("lossAndGrads returned no context gradient");
  return { loss, dContext };
}

/** The un-tuned UNet's loss on the fixed draws of the photo under `context`. */
export async function untunedLoss(
  sd: StableDiffusion,
  photo: Float32Array,
  context: Float32Array,
): Promise<number> {
  return (await untunedStep(sd, photo, context)).loss;
}
