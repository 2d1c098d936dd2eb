/**
 * What every weight format opens to: a map of named tensors, each a dtype, a shape and a byte range of a
 * file, read by offset when asked for. safetensors.ts (safetensors) and torch-file.ts (torch.save zip
 * archives) produce it; weights.ts consumes it. Sharded checkpoints (`*.index.json`) open as one.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { dirname, join } from "node:path";
import { bf16ToF32, f16ToF32, fp8ToF32 } from "../graph/dtype.js";
import { viewAs } from "./dtype.js";
import { ModelFileError } from "./errors.js";
import { readModelJson } from "./files.js";

/** safetensors' dtype names, used for every format. */
export type TensorDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL"
  | "F8_E4M3"
  | "F8_E5M2";

export const DTYPE_BYTES: Readonly<Record<TensorDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export interface TensorEntry {
  readonly name: string;
  readonly dtype: TensorDType;
  readonly shape: readonly number[];
  /** Absolute byte offset of the tensor's data in `file` (little-endian, contiguous). */
  readonly offset: number;
  readonly length: number;
  readonly file: string;
}

export interface TensorFile {
  /** The path that was opened: a weight file or a sharded checkpoint's index. */
  readonly path: string;
  readonly files: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** The tensor's raw little-endian bytes, read from disk now (not cached). */
  read(name: string): Uint8Array;
  /** The tensor as float32, converting F16/BF16/F64/FP8; refuses integer tensors. */
  readFloat32(name: string): Float32Array;
}

/** fs.readSync reads at most 2 GiB at once. */
const READ_CHUNK = 1 << 30;

/** A TensorFile over entries a format's reader has validated against its file(s). */
export function tensorFile(
  path: string,
  entries: readonly TensorEntry[],
  metadata: Readonly<Record<string, string>> = {},
): TensorFile {
  const tensors = new Map(entries.map((e) => [e.name, e]));
  const files = [...new Set(entries.map((e) => e.file))];
  const entry = (name: string): TensorEntry => {
    const e = tensors.get(name);
    if (!e)
      throw new ModelFileError(path, `has no tensor named "${name}" (it holds ${tensors.size} tensors)`);
    return e;
  };
  return {
    path,
    files,
    metadata,
    tensors,
    read: (name) => readTensorBytes(entry(name)),
    readFloat32: (name) => {
      const e = entry(name);
      return bytesToFloat32(readTensorBytes(e), e.dtype, e.file, name);
    },
  };
}

/** Raw bytes of a floating-point tensor → float32. Integer tensors are refused by name. */
export function bytesToFloat32(
  bytes: Uint8Array,
  dtype: TensorDType,
  file: string,
  name: string,
): Float32Array {
  switch (dtype) {
    case "F32":
      return viewAs(bytes, Float32Array);
    case "F16":
      return f16ToF32(viewAs(bytes, Uint16Array));
    case "BF16":
      return bf16ToF32(viewAs(bytes, Uint16Array));
    case "F64":
      return Float32Array.from(viewAs(bytes, Float64Array));
    // fp8 checkpoints (weights stored in 8 bits to halve a file): every value is exact in float32.
    case "F8_E4M3":
      return fp8ToF32(bytes, "E4M3");
    case "F8_E5M2":
      return fp8ToF32(bytes, "E5M2");
    default:
      throw new ModelFileError(
        file,
        `tensor "${name}" has dtype ${dtype}, expected a floating-point tensor (F32, F16, BF16, F64, F8_E4M3, F8_E5M2)`,
      );
  }
}

/** `length` bytes of `file` at `offset`, or a ModelFileError saying the file ended early. */
export function readFileRange(file: string, offset: number, length: number, what: string): Uint8Array {
  const out = new Uint8Array(length);
  const fd = openModelFile(file);
  try {
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, Math.min(READ_CHUNK, length - done), offset + done);
      if (n === 0) {
        throw new ModelFileError(
          file,
          `ended while reading ${what} (${done} of ${length} bytes at offset ${offset}); the file was truncated after it was opened`,
        );
      }
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function readTensorBytes(e: TensorEntry): Uint8Array {
  return readFileRange(e.file, e.offset, e.length, `tensor "${e.name}"`);
}

export function openModelFile(file: string): number {
  try {
    return openSync(file, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ModelFileError(
      file,
      code === "ENOENT" ? "file not found" : `cannot be opened (${code ?? String(err)})`,
    );
  }
}

/**
 * Whether `path` names a sharded checkpoint's index rather than a weight file: `<name>.index.json`, or a
 * variant's, which diffusers and transformers name `<name>.index.<variant>.json`
 * (`diffusion_pytorch_model.safetensors.index.fp16.json`).
 */
export function isShardedIndex(path: string): boolean {
  return /\.index(\.[A-Za-z0-9_]+)?\.json$/.test(path);
}

/**
 * A sharded checkpoint's index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`):
 * {"metadata": {...}, "weight_map": {tensor name: shard file name}}; each shard is opened with
 * `readShard` and must hold the tensors the index places there.
 */
export function readShardedIndex(
  indexPath: string,
  readShard: (shardPath: string) => readonly TensorEntry[],
): TensorEntry[] {
  const weightMap = (readModelJson(indexPath) as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new ModelFileError(indexPath, `has no "weight_map" object`);
  }
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof shard !== "string" || shard.includes("..") || shard.startsWith("/")) {
      throw new ModelFileError(
        indexPath,
        `maps tensor "${name}" to an invalid shard ${JSON.stringify(shard)}`,
      );
    }
    byShard.set(shard, [...(byShard.get(shard) ?? []), name]);
  }
  const entries: TensorEntry[] = [];
  for (const [shard, names] of byShard) {
    const shardPath = join(dirname(indexPath), shard);
    const inShard = new Map(readShard(shardPath).map((e) => [e.name, e]));
    for (const name of names) {
      const e = inShard.get(name);
      if (!e) throw new ModelFileError(shardPath, `has no tensor "${name}", which ${indexPath} places there`);
      entries.push(e);
    }
  }
  return entries;
}
