/**
 * Golden data of the reference fixtures (test/fixtures/models/README.md): golden.json plus the tensors of
 * golden.safetensors, for every fixture folder named in SD_FIXTURES.
 */
import { readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { viewAs } from "../../src/engine/models/dtype.js";
import { openSafetensors, type Safetensors } from "../../src/engine/models/safetensors.js";

const DEFAULT_FIXTURES = "test/fixtures/models/sd1,test/fixtures/models/sd2";

export interface GoldenJson {
  variant: string;
  prompts: string[];
  input_ids: number[][];
  "ddim.step.timestep": number;
  "grad.timestep": number;
  txt2img: {
    prompt: string;
    negative_prompt: string;
    steps: number;
    guidance_scale: number;
    height: number;
    width: number;
  };
  tensors: Record<string, number[]>;
  [key: string]: unknown;
}

export interface Golden {
  /** The fixture folder; the checkpoint is `modelDir`. */
  readonly dir: string;
  readonly name: string;
  readonly modelDir: string;
  readonly json: GoldenJson;
  readonly tensors: Safetensors;
  names(prefix?: string): string[];
  shape(name: string): readonly number[];
  /** A float tensor as float32 (the goldens are stored as F32). */
  f32(name: string): Float32Array;
  /** An int64 tensor (token ids, timesteps) as plain numbers. */
  ints(name: string): number[];
}

/** Fixture folders from SD_FIXTURES (comma-separated), resolved against the working directory. */
export function fixtureDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env.SD_FIXTURES || DEFAULT_FIXTURES)
    .split(",")
    .map((d) => d.trim())
    .filter((d) => d.length > 0)
    .map((d) => resolve(d));
}

export function loadGolden(dir: string): Golden {
  const json = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8")) as GoldenJson;
  const tensors = openSafetensors(join(dir, "golden.safetensors"));
  const entry = (name: string) => {
    const e = tensors.tensors.get(name);
    if (!e) throw new Error(`${dir}/golden.safetensors has no tensor "${name}"`);
    return e;
  };
  return {
    dir,
    name: basename(dir),
    modelDir: join(dir, "model"),
    json,
    tensors,
    names: (prefix = "") => [...tensors.tensors.keys()].filter((n) => n.startsWith(prefix)).sort(),
    shape: (name) => entry(name).shape,
    f32: (name) => tensors.readFloat32(entry(name).name),
    ints: (name) => {
      const e = entry(name);
      if (e.dtype !== "I64") throw new Error(`golden tensor "${name}" is ${e.dtype}, not I64`);
      return Array.from(viewAs(tensors.read(name), BigInt64Array), Number);
    },
  };
}

/** All fixtures in SD_FIXTURES, loaded. */
export function goldens(): Golden[] {
  return fixtureDirs().map(loadGolden);
}

/** ‖a − b‖ / ‖b‖, the parity measure of the issue. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relError: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = (a[i] as number) - (b[i] as number);
    num += d * d;
    den += (b[i] as number) ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

/** Two nudges (the up/down pattern and its opposite): a result's float32 spread is the larger response. */
export type Phase = 0 | 1;
export const PHASES: readonly Phase[] = [0, 1];

/** Moves every value by one float32 ulp (alternating up and down; `phase` picks which way the first goes). */
export function ulpNudge(x: Float32Array, phase: Phase): Float32Array {
  return x.map((v, i) => v * (1 + ((i + phase) % 2 ? 2 ** -23 : -(2 ** -23))));
}
