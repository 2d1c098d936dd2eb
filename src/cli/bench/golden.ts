/**
 * The fixtures' reference data (test/fixtures/models/README.md) as the engine reads it: a fixture folder's
 * data files, each a `<stem>.safetensors` with a `<stem>.json` beside it (golden, extra, exact, photoswap,
 * …). Shared by `bench parity` and the parity suites (test/helpers/golden.ts), which must read the same.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { LatentSize, LossArgs } from "../../engine/index.js";
import { viewAs } from "../../engine/models/dtype.js";
import { openSafetensors } from "../../engine/models/safetensors.js";
import type { TensorFile } from "../../engine/models/tensor-file.js";
import type { Txt2ImgOptions } from "../../engine/pipelines/txt2img.js";

/** One `<stem>.safetensors` + `<stem>.json` pair of a fixture folder. */
export interface FixtureData {
  readonly path: string;
  readonly json: Record<string, unknown> & { tensors?: Record<string, unknown> };
  readonly tensors: TensorFile;
  has(name: string): boolean;
  /** Tensor names starting with `prefix`, sorted. */
  names(prefix?: string): string[];
  shape(name: string): readonly number[];
  /** A float tensor as float32 (float64 ones rounded). */
  f32(name: string): Float32Array;
  /** A float tensor exactly: float64 ones as stored, float32/float16 ones widened. */
  f64(name: string): Float64Array;
  /** An int64 tensor (token ids, timesteps) as plain numbers. */
  ints(name: string): number[];
}

export function loadFixtureData(dir: string, stem: string): FixtureData {
  const path = join(dir, `${stem}.safetensors`);
  const jsonPath = join(dir, `${stem}.json`);
  const json = existsSync(jsonPath)
    ? (JSON.parse(readFileSync(jsonPath, "utf8")) as FixtureData["json"])
    : {};
  const tensors = openSafetensors(path);
  const entry = (name: string) => {
    const e = tensors.tensors.get(name);
    if (!e) throw new Error(`${path} has no tensor "${name}"`);
    return e;
  };
  return {
    path,
    json,
    tensors,
    has: (name) => tensors.tensors.has(name),
    names: (prefix = "") => [...tensors.tensors.keys()].filter((n) => n.startsWith(prefix)).sort(),
    shape: (name) => entry(name).shape,
    f32: (name) => tensors.readFloat32(entry(name).name),
    f64: (name) =>
      entry(name).dtype === "F64"
        ? viewAs(tensors.read(name), Float64Array).slice()
        : Float64Array.from(tensors.readFloat32(name)),
    ints: (name) => {
      const e = entry(name);
      if (e.dtype !== "I64") throw new Error(`${path}: tensor "${name}" is ${e.dtype}, not I64`);
      return Array.from(viewAs(tensors.read(name), BigInt64Array), Number);
    },
  };
}

export interface GoldenJson {
  variant: string;
  prompts: string[];
  input_ids: number[][];
  "ddim.step.timestep": number;
  "grad.timestep": number;
  txt2img: GoldenTxt2img;
  tensors: Record<string, number[]>;
  [key: string]: unknown;
}

/** A fixture's golden data (golden.safetensors, golden.json: torch's float32 results). */
export interface GoldenData extends FixtureData {
  readonly json: GoldenJson;
}

export function loadGoldenData(dir: string): GoldenData {
  const data = loadFixtureData(dir, "golden");
  return { ...data, json: data.json as GoldenJson };
}

/** golden.json's `txt2img`: the arguments of the diffusers StableDiffusionPipeline call it records. */
export interface GoldenTxt2img {
  prompt: string;
  negative_prompt: string;
  steps: number;
  guidance_scale: number;
  height: number;
  width: number;
}

/** Where a txt2img run starts instead of the golden's latents: a seed's noise at another size (pixels). */
export interface SeededStart {
  seed: number;
  height: number;
  width: number;
}

/**
 * The txt2img call the golden records, from its initial latents (`txt2img.latents_in`), or with the same
 * prompt, steps and guidance from a seed at another size (the parity suite's seeded run).
 */
export function goldenTxt2imgOptions(o: GoldenTxt2img, start: Float32Array | SeededStart): Txt2ImgOptions {
  const settings = {
    prompt: o.prompt,
    negativePrompt: o.negative_prompt,
    steps: o.steps,
    guidance: o.guidance_scale,
  };
  return start instanceof Float32Array
    ? { ...settings, height: o.height, width: o.width, latents: start }
    : { ...settings, ...start };
}

/** The goldens' one UNet call (`unet.sample` at `unet.timestep`, given `unet.encoder_hidden_states`) as
 *  `predictNoise`'s arguments. */
export function goldenUnetArgs(
  g: Pick<FixtureData, "f32" | "ints" | "shape">,
): [Float32Array, LatentSize, number[], Float32Array] {
  const [, , height, width] = g.shape("unet.sample") as [number, number, number, number];
  return [
    g.f32("unet.sample"),
    { height, width },
    g.ints("unet.timestep"),
    g.f32("unet.encoder_hidden_states"),
  ];
}

/** The golden's denoising loss step (grad.x0 noised by grad.noise at grad.timestep, under grad.context). */
export function goldenLossArgs(g: GoldenData): Omit<LossArgs, "wrt"> {
  const [batch, , height, width] = g.shape("grad.x0") as [number, number, number, number];
  return {
    latents0: g.f32("grad.x0"),
    size: { height, width },
    noise: g.f32("grad.noise"),
    t: new Array<number>(batch).fill(g.json["grad.timestep"]),
    context: g.f32("grad.context"),
  };
}
