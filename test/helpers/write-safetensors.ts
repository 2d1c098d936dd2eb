/** Writes small safetensors files for tests (valid ones, and ones broken on purpose via `header`). */
import { writeFileSync } from "node:fs";

export interface TestTensor {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Serializes tensors in order; `patchHeader` may rewrite the header object before it is written. */
export function writeSafetensors(
  path: string,
  tensors: Record<string, TestTensor>,
  patchHeader?: (header: Record<string, unknown>) => void,
): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  patchHeader?.(header);
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json, ...Object.values(tensors).map((t) => Buffer.from(t.data))]));
}

export function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}
