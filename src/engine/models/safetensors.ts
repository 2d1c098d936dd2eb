/**
 * Reader for the safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length, a JSON header mapping tensor names to {dtype, shape, data_offsets}, then the raw data.
 *
 * Only the header is read when a file is opened; tensor bytes are read by offset when asked for, so a
 * 3.4 GB UNet never sits in memory whole. Sharded checkpoints (`*.safetensors.index[.<variant>].json`) open as one.
 */
import { closeSync, fstatSync, readSync } from "node:fs";
import { ModelFileError } from "./errors.js";
import {
  DTYPE_BYTES,
  isShardedIndex,
  openModelFile,
  readShardedIndex,
  type TensorDType,
  type TensorEntry,
  type TensorFile,
  tensorFile,
} from "./tensor-file.js";

/** The header is JSON text; real ones are well under a megabyte, the format caps them at 100 MB. */
export const MAX_HEADER_BYTES = 100_000_000;

export function openSafetensors(path: string): TensorFile {
  if (isShardedIndex(path))
    return tensorFile(
      path,
      readShardedIndex(path, (p) => readHeader(p).entries),
    );
  const { entries, metadata } = readHeader(path);
  return tensorFile(path, entries, metadata);
}

export interface Header {
  entries: TensorEntry[];
  metadata: Record<string, string>;
}

function readHeader(file: string): Header {
  const fd = openModelFile(file);
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

/** A header's JSON (`dataStart`: its end in the file; `dataSize`: the bytes after it) checked and read. */
export function parseHeader(file: string, json: unknown, dataStart: number, dataSize: number): Header {
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
    const itemSize = DTYPE_BYTES[dtype as TensorDType];
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
      dtype: dtype as TensorDType,
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
