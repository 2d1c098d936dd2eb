/**
 * A training graph's trained tensors as one flat float32 input, [rows, PACK_ROW], each tensor in whole rows
 * (zero-padded). Adam then updates one tensor instead of each of SD 1.5's 626 LoRA tensors (13 ops apiece:
 * ≈ 8 100 small kernels per step on a GPU, more than the update's arithmetic), and the session carries three
 * tensors (values, m, v) from step to step. Whole rows, as emit.ts's packed outputs: onnxruntime's CUDA
 * Concat of unequal flat pieces uploads an index table as long as the result on every run; of [rows, 256]
 * pieces along rows, one entry per row. In a float16 graph the flat tensor is cast once and sliced in
 * float16, and the gradient is laid out in float16 and cast back once: the same values as a Cast per piece
 * and per gradient (slicing and Concat do not round), without two small kernels per tensor.
 */

import type { DType } from "../graph/dtype.js";
import { PACK_ROW } from "../graph/emit.js";
import type { Tensor } from "../graph/graph.js";
import { cast, concat, pad, reshape, slice } from "../graph/ops.js";

/** Where a graph's trained tensors come from (LoraInputs, StoreParams): by default an input each. */
export type TrainedSource = (name: string, shape: readonly number[]) => Tensor;

export interface FlatPart {
  name: string;
  shape: number[];
  /** Values of the tensor, and its first row and rows in the flat tensor. */
  size: number;
  row: number;
  rows: number;
}

export interface FlatLayout {
  parts: FlatPart[];
  rows: number;
}

export function flatLayout(tensors: readonly { name: string; shape: readonly number[] }[]): FlatLayout {
  let row = 0;
  const parts = tensors.map(({ name, shape }) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const rows = Math.ceil(size / PACK_ROW);
    const part = { name, shape: [...shape], size, row, rows };
    row += rows;
    return part;
  });
  return { parts, rows: row };
}

/**
 * The flat input's pieces, as a TrainedSource: each trained tensor is its rows, reshaped, in `dtype` (the
 * dtype the graph computes with them; their users' casts to it are then no-ops).
 */
export function flatSource(flat: Tensor, layout: FlatLayout, dtype: DType = flat.dtype): TrainedSource {
  const byName = new Map(layout.parts.map((p) => [p.name, p]));
  const values = cast(flat, dtype);
  return (name, shape) => {
    const p = byName.get(name);
    if (!p || p.shape.join() !== shape.join())
      throw new Error(
        `flat parameters: ${name} [${shape}] is not in the layout (${p ? `[${p.shape}]` : "absent"})`,
      );
    const rows = reshape(slice(values, [p.row], [p.row + p.rows], [0]), [p.rows * PACK_ROW]);
    return reshape(p.size < p.rows * PACK_ROW ? slice(rows, [0], [p.size]) : rows, p.shape);
  };
}

/** The parts' gradients as one float32 tensor shaped as the flat one, [rows, PACK_ROW]; padded and concatenated in `dtype`. */
export function flatGradient(
  layout: FlatLayout,
  grads: ReadonlyMap<string, Tensor>,
  dtype: DType = "float32",
): Tensor {
  const laidOut = concat(
    layout.parts.map((p) => {
      const g = grads.get(p.name);
      if (!g) throw new Error(`flat parameters: no gradient for ${p.name}`);
      const flat = reshape(cast(g, dtype), [p.size]);
      return reshape(p.size < p.rows * PACK_ROW ? pad(flat, [0, p.rows * PACK_ROW - p.size]) : flat, [
        p.rows,
        PACK_ROW,
      ]);
    }),
    0,
  );
  return cast(laidOut, "float32");
}

/** The host's side: the named arrays packed as the flat tensor's values. */
export function packFlat(layout: FlatLayout, values: (name: string) => Float32Array): Float32Array {
  const out = new Float32Array(layout.rows * PACK_ROW);
  for (const p of layout.parts) {
    const v = values(p.name);
    if (v.length !== p.size)
      throw new Error(`flat parameters: ${p.name} holds ${v.length} values, not ${p.size}`);
    out.set(v, p.row * PACK_ROW);
  }
  return out;
}

/** The flat tensor's values written back into the named arrays. */
export function unpackFlat(
  layout: FlatLayout,
  flat: Float32Array,
  into: (name: string) => Float32Array,
): void {
  for (const p of layout.parts) into(p.name).set(flat.subarray(p.row * PACK_ROW, p.row * PACK_ROW + p.size));
}
