/**
 * The Photoswap goldens of a fixture folder (test/fixtures/models/README.md, ../shared/PHOTOSWAP.md §12):
 * photoswap.json and the float32 tensors of photoswap.safetensors, for every folder in SD_FIXTURES that
 * has them.
 */
import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import { fixtureDirs, loadFixtureData } from "./golden.js";

export interface PhotoswapJson {
  prompts: { source: string; target: string; source_word: string; target_word: string };
  token_ids: { source: number[]; target: number[] };
  mapper: number[];
  mapper_alphas: number[];
  mapper_cases: Array<{
    source: string;
    target: string;
    source_ids: number[];
    target_ids: number[];
    mapper_head: number[];
    alphas_head: number[];
  }>;
  /** "text | word" → token positions. */
  word_inds_cases: Record<string, number[]>;
  num_steps: number;
  guidance_scale: number;
  fractions: {
    cross_map_replace_steps: number;
    self_output_replace_steps: number;
    self_map_replace_steps: number;
    start_blend: number;
  };
  windows: { cross_end: number; selfmap_end: number; phi_last: number; blend_start: number };
  recorded_steps: Record<"swap.phi" | "swap.cross" | "swap.selfmap", number>;
  scheduler: { timesteps: number[] };
  swap_latent_hw: [number, number];
  native_latent_hw: [number, number];
  store_max_tokens: { swap: number; native: number };
  layers: Array<{ name: string; place: string; level: number; cross: boolean }>;
  swap_blend: BlendRun;
  swap_blend_th: BlendRun;
  real: { blend_layers: string[]; target_mask_fraction: number[]; batch_spread: number };
  /** The reference's self-checks: max |a − b| by description. */
  checks_max_abs_diff: Record<string, number>;
  tensors: Record<string, number[]>;
}

export interface BlendRun {
  th: number;
  applied_steps: number[];
  layers: string[];
  map_hw: [number, number];
  word_inds: [number[], number[]];
  target_mask_fraction: number[];
  min_margin_to_th: number[];
}

export interface PhotoswapGolden {
  readonly name: string;
  readonly modelDir: string;
  readonly json: PhotoswapJson;
  names(prefix: string): string[];
  shape(name: string): readonly number[];
  f32(name: string): Float32Array;
}

export function loadPhotoswapGolden(dir: string): PhotoswapGolden {
  const data = loadFixtureData(dir, "photoswap");
  return {
    name: basename(dir),
    modelDir: join(dir, "model"),
    json: data.json as unknown as PhotoswapJson,
    names: data.names,
    shape: data.shape,
    f32: data.f32,
  };
}

/** Every fixture folder in SD_FIXTURES with a photoswap.safetensors. */
export function photoswapGoldens(): PhotoswapGolden[] {
  return fixtureDirs()
    .filter((d) => existsSync(join(d, "photoswap.safetensors")))
    .map(loadPhotoswapGolden);
}
