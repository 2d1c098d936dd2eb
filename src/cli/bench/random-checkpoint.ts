/**
 * A diffusers-format checkpoint folder with random weights, written to disk, so a benchmark can time the
 * whole engine (`StableDiffusion.load`, its lazily built sessions, the pipelines on top) at full SD 1.5
 * size where no real weights can be downloaded, and so tests can load checkpoint layouts no fixture has
 * (3- or 5-level UNets, odd widths). Shapes come from `bench sd`'s configs (or a test's); the parameter
 * names and shapes are the ones the engine's own network builders ask for (recorded while building the
 * graphs); the values are `randomWeights()`' (timings do not depend on them). Tokenizer, scheduler and
 * model_index come from the tiny fixture checkpoint (the real CLIP vocabulary and SD's DDIM config).
 */
import {
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  openSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import { FIXTURE_MODEL } from "../../config.js";
import type { Graph } from "../../engine/graph/index.js";
import {
  textEncoderGraph,
  unetGraph,
  vaeDecodeGraph,
  vaeEncodeGraph,
} from "../../engine/models/components.js";
import type { TextEncoderConfig, UNetConfig, VaeConfig } from "../../engine/models/config.js";
import type { WeightSource } from "../../engine/models/params.js";
import { randomWeights } from "../../engine/models/random-weights.js";

/** The three networks' configs (written as their config.json, with the weights their builders ask for). */
export interface CheckpointShapes {
  unet: UNetConfig;
  vae: VaeConfig;
  clip: TextEncoderConfig;
}
type StoredDType = "float32" | "float16";

/** Every parameter a builder asks for, with its shape (the builder's graph is thrown away). */
function recordParams(
  build: (source: WeightSource) => Graph | { graph: Graph },
): Map<string, readonly number[]> {
  const seen = new Map<string, readonly number[]>();
  const random = randomWeights();
  build({
    has: () => true,
    data(name, request) {
      if (!request?.shape) throw new Error(`random checkpoint: "${name}" requested without a shape`);
      seen.set(name, request.shape);
      return random.data(name, request);
    },
  });
  return seen;
}

/** safetensors, one tensor at a time (a 1.7 GB UNet never sits in memory whole). */
function writeSafetensors(file: string, params: Map<string, readonly number[]>, dtype: StoredDType): void {
  const names = [...params.keys()].sort();
  const width = dtype === "float16" ? 2 : 4;
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const name of names) {
    const shape = params.get(name) as readonly number[];
    const bytes = shape.reduce((a, b) => a * b, 1) * width;
    header[name] = {
      dtype: dtype === "float16" ? "F16" : "F32",
      shape,
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fd = openSync(file, "w");
  try {
    writeSync(fd, head);
    writeSync(fd, json);
    const random = randomWeights(dtype);
    for (const name of names) {
      writeSync(fd, random.data(name, { shape: params.get(name) as readonly number[], dtype }).bytes());
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes (or reuses, when a previous run completed it) a random-weight checkpoint of `shapes` in `dir`.
 * Returns the folder for `StableDiffusion.load`.
 */
export function randomCheckpoint(
  dir: string,
  shapes: CheckpointShapes,
  dtype: StoredDType = "float16",
): string {
  const done = path.join(dir, ".complete");
  if (existsSync(done)) return dir;
  rmSync(dir, { recursive: true, force: true });
  // Parameter shapes do not depend on the spatial size: record at the smallest one that halves evenly.
  const ls = 2 ** (shapes.unet.block_out_channels.length - 1);
  const px = ls * 2 ** (shapes.vae.block_out_channels.length - 1);
  const components: Array<[string, string, Record<string, unknown>, Map<string, readonly number[]>]> = [
    [
      "unet",
      "diffusion_pytorch_model",
      { _class_name: "UNet2DConditionModel", ...shapes.unet },
      recordParams((w) => unetGraph(w, shapes.unet, { batch: 1, height: ls, width: ls })),
    ],
    [
      "vae",
      "diffusion_pytorch_model",
      { _class_name: "AutoencoderKL", ...shapes.vae },
      new Map([
        ...recordParams((w) => vaeEncodeGraph(w, shapes.vae, px, px)),
        ...recordParams((w) => vaeDecodeGraph(w, shapes.vae, 1, ls, ls)),
      ]),
    ],
    [
      "text_encoder",
      "model",
      { architectures: ["CLIPTextModel"], ...shapes.clip },
      recordParams((w) => textEncoderGraph(w, shapes.clip, 1)),
    ],
  ];
  for (const [name, weights, config, params] of components) {
    mkdirSync(path.join(dir, name), { recursive: true });
    writeFileSync(path.join(dir, name, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
    writeSafetensors(path.join(dir, name, `${weights}.safetensors`), params, dtype);
  }
  for (const part of ["model_index.json", "tokenizer", "scheduler"]) {
    cpSync(path.join(FIXTURE_MODEL, part), path.join(dir, part), { recursive: true });
  }
  writeFileSync(done, "");
  return dir;
}
