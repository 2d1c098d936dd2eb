/**
 * Reader for the safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length, a JSON header mapping tensor names to {dtype, shape, data_offsets}, then the raw data.
 *
 * Only the header is read when a file is opened; tensor bytes are read by offset when asked for, so a
 * 3.4 GB UNet never sits in memory whole. Sharded checkpoints (`*.safetensors.index.json`) open as one.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { dirname, join } from "node:path";
import { bf16ToF32, f16ToF32 } from "../graph/dtype.js";
import { viewAs } from "./dtype.js";
import { ModelFileError } from "./errors.js";

export type SafetensorsDType =
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

const DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = {
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
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** Absolute byte offset of the tensor's data in `file`. */
  readonly offset: number;
  readonly length: number;
  readonly file: string;
}

export interface Safetensors {
  /** The path that was opened: a `.safetensors` file or a sharded checkpoint's index. */
  readonly path: string;
  readonly files: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** The tensor's raw little-endian bytes, read from disk now (not cached). */
  read(name: string): Uint8Array;
  /** The tensor as float32, converting F16/BF16/F64; refuses integer tensors. */
  readFloat32(name: string): Float32Array;
}

/** The header is JSON text; real ones are well under a megabyte, the format caps them at 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;
/** fs.readSync reads at most 2 GiB at once. */
const READ_CHUNK = 1 << 30;

export function openSafetensors(path: string): Safetensors {
  const { entries, metadata } = path.endsWith(".index.json")
    ? { entries: readShardedHeaders(path), metadata: {} }
    : readHeader(path);
  return safetensorsView(path, entries, metadata);
}

/**
 * Tensors at known places in files, read as openSafetensors reads them. Entries may be renamed, reshaped
 * (same bytes) or a contiguous part of another tensor: a single-file checkpoint's renamed view is one.
 */
export function safetensorsView(
  path: string,
  entries: readonly TensorEntry[],
  metadata: Readonly<Record<string, string>> = {},
): Safetensors {
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

/** Raw bytes of a floating-point tensor → float32. Integer and fp8 tensors are refused by name. */
export function bytesToFloat32(
  bytes: Uint8Array,
  dtype: SafetensorsDType,
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
    default:
      throw new ModelFileError(
        file,
        `tensor "${name}" has dtype ${dtype}, expected a floating-point tensor (F32, F16, BF16)`,
      );
  }
}

function readTensorBytes(e: TensorEntry): Uint8Array {
  const out = new Uint8Array(e.length);
  const fd = openFile(e.file);
  try {
    let done = 0;
    while (done < e.length) {
      const n = readSync(fd, out, done, Math.min(READ_CHUNK, e.length - done), e.offset + done);
      if (n === 0) {
        throw new ModelFileError(
          e.file,
          `ended while reading tensor "${e.name}" (${done} of ${e.length} bytes at offset ${e.offset}); the file was truncated after it was opened`,
        );
      }
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function openFile(file: string): number {
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

interface Header {
  entries: TensorEntry[];
  metadata: Record<string, string>;
}

function readHeader(file: string): Header {
  const fd = openFile(file);
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new ModelFileError(file, `is ${size} bytes long, too short to be a safetensors file`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new ModelFileError(
        file,
        `declares a ${headerLen}-byte header (limit ${MAX_HEADER_BYTES}); not a safetensors file?`,
      );
    }
    const n = Number(headerLen);
    if (8 + n > size) {
      throw new ModelFileError(
        file,
        `declares a ${n}-byte header but holds only ${size - 8} bytes after the length (truncated file?)`,
      );
    }
    const headerBuf = Buffer.alloc(n);
    readSync(fd, headerBuf, 0, n, 8);
    let json: unknown;
    try {
      json = JSON.parse(headerBuf.toString("utf8"));
    } catch (err) {
      throw new ModelFileError(file, `header is not valid JSON (${(err as Error).message})`);
    }
    return parseHeader(file, json, 8 + n, size - 8 - n);
  } finally {
    closeSync(fd);
  }
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function parseHeader(file: string, json: unknown, dataStart: number, dataSize: number): Header {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelFileError(file, "header is not a JSON object");
  }
  const entries: TensorEntry[] = [];
  const spans: Array<{ name: string; begin: number; end: number }> = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = (raw ?? {}) as Record<string, string>;
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    const dtype = info?.dtype;
    if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
      throw new ModelFileError(file, `tensor "${name}" has unknown dtype ${JSON.stringify(dtype)}`);
    }
    const shape = info?.shape;
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new ModelFileError(file, `tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offsets = info?.data_offsets;
    const [begin, end] = Array.isArray(offsets) && offsets.length === 2 ? offsets : [];
    if (!isNonNegInt(begin) || !isNonNegInt(end) || begin > end) {
      throw new ModelFileError(file, `tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const itemSize = DTYPE_BYTES[dtype as SafetensorsDType];
    const expected = shape.reduce((a: number, b: number) => a * b, 1) * itemSize;
    if (end - begin !== expected) {
      throw new ModelFileError(
        file,
        `tensor "${name}": data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype} shape [${shape.join(", ")}] needs ${expected}`,
      );
    }
    if (end > dataSize) {
      throw new ModelFileError(
        file,
        `tensor "${name}" ends at byte ${end} of the data section but the file holds only ${dataSize} bytes of data (truncated file?)`,
      );
    }
    spans.push({ name, begin, end });
    entries.push({
      name,
      dtype: dtype as SafetensorsDType,
      shape,
      offset: dataStart + begin,
      length: end - begin,
      file,
    });
  }
  spans.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1] as (typeof spans)[number];
    const cur = spans[i] as (typeof spans)[number];
    if (cur.begin < prev.end) {
      throw new ModelFileError(file, `tensors "${prev.name}" and "${cur.name}" overlap in the data section`);
    }
  }
  return { entries, metadata };
}

/** `model.safetensors.index.json`: {"metadata": {...}, "weight_map": {tensor name: shard file name}}. */
function readShardedHeaders(indexPath: string): TensorEntry[] {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, "utf8"));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ModelFileError(
      indexPath,
      code === "ENOENT" ? "file not found" : `is not valid JSON (${(err as Error).message})`,
    );
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
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
    const inShard = new Map(readHeader(shardPath).entries.map((e) => [e.name, e]));
    for (const name of names) {
      const e = inShard.get(name);
      if (!e) throw new ModelFileError(shardPath, `has no tensor "${name}", which ${indexPath} places there`);
      entries.push(e);
    }
  }
  return entries;
}
