/**
 * The fixtures' golden data (test/fixtures/models/README.md) as the engine reads it: shared by `bench
 * parity` and the parity suite (test/engine/parity.test.ts), which must run the same checks on it.
 */
import type { Txt2ImgOptions } from "../../engine/pipelines/txt2img.js";

/** golden.json's `txt2img`: the arguments of the diffusers StableDiffusionPipeline call it records. */
export interface GoldenTxt2img {
  prompt: string;
  negative_prompt: string;
  steps: number;
  guidance_scale: number;
  height: number;
  width: number;
}

/** The txt2img call the golden records, from its initial latents (`txt2img.latents_in`). */
export function goldenTxt2imgOptions(o: GoldenTxt2img, latents: Float32Array): Txt2ImgOptions {
  return {
    prompt: o.prompt,
    negativePrompt: o.negative_prompt,
    steps: o.steps,
    guidance: o.guidance_scale,
    height: o.height,
    width: o.width,
    latents,
  };
}
