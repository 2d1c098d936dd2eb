/**
 * A native-fp16 device on the CPU provider, for tests: onnxruntime's CPU kernels compute float16 ops in
 * float32 and drop the casts between them (a raw float16 ReduceMean comes back unrounded), so a float16
 * graph there behaves like a float32 one. Under `withHalfStorage`, every float16 value an op writes is
 * rounded to what float16 can hold — 11 significant bits (Veltkamp split), the subnormal grid of 2⁻²⁴
 * below 2⁻¹⁴, ±∞ above 65 504 — as a device that stores float16 between kernels does. Kernels still
 * compute in float32 inside, except where a float16 kernel accumulates in float16: ReduceSum, ReduceMean
 * and Softmax's Σ exp add in float16 as a GPU kernel would (each thread a chunk of 64 in turn, then a tree
 * over the chunks), so small terms are lost against a large partial sum and a sum past 65 504 overflows.
 */
import type { Node, Tensor } from "../../src/engine/graph/graph.js";
import type { Emitter, OpDef } from "../../src/engine/graph/op.js";
import { PRIMITIVES } from "../../src/engine/graph/primitives.js";
import { emitThrough, type OpEmit } from "./emit-through.js";

const FLOAT = 1;
const FLOAT16 = 10;

/** Emits y = fp16-rounded(x) for a float32 value x (names in, name out). */
function emitRoundToHalf(e: Emitter, x: string, out: string): void {
  const c = (v: number) => e.fill("float32", [], v);
  const op = (type: string, inputs: string[], attrs?: Record<string, number>) => {
    const o = e.fresh(`half_${type}`);
    e.node(type, inputs, [o], attrs);
    return o;
  };
  // Veltkamp: with t = x·(2¹³ + 1), t − (t − x) keeps the top 24 − 13 = 11 bits of x, rounded.
  const t = op("Mul", [x, c(2 ** 13 + 1)]);
  const hi = op("Sub", [t, op("Sub", [t, x])]);
  const abs = op("Abs", [x]);
  const sub = op("Mul", [op("Round", [op("Mul", [x, c(2 ** 24)])]), c(2 ** -24)]);
  const normal = op("Where", [op("Less", [abs, c(2 ** -14)]), sub, hi]);
  // 65 520 and up round to ∞ in float16.
  e.node("Where", [op("Less", [abs, c(65520)]), normal, op("Mul", [x, c(Number.POSITIVE_INFINITY)])], [out]);
}

/** Threads of a float16 reduction kernel each add this many values in turn, then a tree joins them. */
const CHUNK = 64;

/**
 * Σ over the last axis of a float32 value [rest, n] holding float16 values, as a float16 kernel adds:
 * each chunk of CHUNK values in turn, every partial sum stored as float16, then the chunks' sums pairwise,
 * stored as float16 too. Returns [rest, 1].
 */
function emitHalfSum(e: Emitter, x: string, rest: number, n: number): string {
  const op = (type: string, inputs: string[], attrs?: Record<string, number | number[]>) => {
    const o = e.fresh(`half_${type}`);
    e.node(type, inputs, [o], attrs);
    return o;
  };
  const round = (v: string) => {
    const o = e.fresh("half_partial");
    emitRoundToHalf(e, v, o);
    return o;
  };
  const chunks = Math.ceil(n / CHUNK);
  const padded = chunks * CHUNK === n ? x : op("Pad", [x, e.ints([0, 0, 0, chunks * CHUNK - n])]);
  const grid = op("Reshape", [padded, e.ints([rest, chunks, CHUNK])]);
  const column = (k: number) => op("Slice", [grid, e.ints([k]), e.ints([k + 1]), e.ints([2])]);
  let acc = column(0);
  for (let k = 1; k < CHUNK; k++) acc = round(op("Add", [acc, column(k)]));
  let level = op("Reshape", [acc, e.ints([rest, chunks])]);
  let m = 2 ** Math.ceil(Math.log2(chunks));
  if (m !== chunks) level = op("Pad", [level, e.ints([0, 0, 0, m - chunks])]);
  while (m > 1) {
    m /= 2;
    level = round(
      op("ReduceSum", [op("Reshape", [level, e.ints([rest, m, 2])]), e.ints([2])], { keepdims: 0 }),
    );
  }
  return op("Reshape", [level, e.ints([rest, 1])]);
}

/** A float16 ReduceSum/ReduceMean with a float16 accumulator (emitHalfSum). */
function emitHalfReduction(e: Emitter, node: Node): void {
  const x = node.inputs[0] as Tensor;
  const y = node.outputs[0] as Tensor;
  const axes = node.attrs.axes as number[];
  const kept = x.shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const n = axes.reduce((k, a) => k * (x.shape[a] as number), 1);
  const rest = kept.reduce((k, a) => k * (x.shape[a] as number), 1);
  const moved = e.fresh("half_moved");
  e.node("Transpose", [e.name(x)], [moved], { perm: [...kept, ...axes] });
  const flat = e.fresh("half_flat");
  e.node("Reshape", [moved, e.ints([rest, n])], [flat]);
  const wide = e.fresh("half_wide");
  e.node("Cast", [flat], [wide], { to: FLOAT });
  let total = emitHalfSum(e, wide, rest, n);
  if (node.op === "ReduceMean") {
    const quotient = e.fresh("half_quotient");
    e.node("Div", [total, e.fill("float32", [], n)], [quotient]);
    total = e.fresh("half_mean");
    emitRoundToHalf(e, quotient, total);
  }
  const narrow = e.fresh("half_narrow");
  e.node("Cast", [total], [narrow], { to: FLOAT16 });
  e.node("Reshape", [narrow, e.ints(y.shape)], [e.name(y)]);
}

/** A float16 Softmax over the last axis: exp(x − max) stored as float16, summed by emitHalfSum. */
function emitHalfSoftmax(e: Emitter, node: Node): void {
  const x = node.inputs[0] as Tensor;
  const y = node.outputs[0] as Tensor;
  if ((node.attrs.axis as number) !== x.rank - 1)
    throw new Error("half emulation: softmax over the last axis only");
  const n = x.shape[x.rank - 1] as number;
  const rest = x.shape.slice(0, -1).reduce((k, d) => k * d, 1);
  const op = (type: string, inputs: string[], attrs?: Record<string, number | number[]>) => {
    const o = e.fresh(`half_${type}`);
    e.node(type, inputs, [o], attrs);
    return o;
  };
  const wide = op("Reshape", [op("Cast", [e.name(x)], { to: FLOAT }), e.ints([rest, n])]);
  const shifted = op("Sub", [wide, op("ReduceMax", [wide], { axes: [1], keepdims: 1 })]);
  const exps = e.fresh("half_exps");
  emitRoundToHalf(e, op("Exp", [shifted]), exps);
  const probs = e.fresh("half_probs");
  emitRoundToHalf(e, op("Div", [exps, emitHalfSum(e, exps, rest, n)]), probs);
  e.node("Reshape", [op("Cast", [probs], { to: FLOAT16 }), e.ints(y.shape)], [e.name(y)]);
}

function halfStorage(emit: OpEmit): OpEmit {
  return (e: Emitter, node: Node) => {
    if ((node.inputs[0] as Tensor | undefined)?.dtype === "float16") {
      if (node.op === "ReduceSum" || node.op === "ReduceMean") return emitHalfReduction(e, node);
      if (node.op === "Softmax") return emitHalfSoftmax(e, node);
    }
    const outs = node.outputs.filter((t) => t.dtype === "float16");
    if (outs.length === 0) return emit(e, node);
    emitThrough(emit, e, node, outs, "half_raw", (raw, out) => {
      const wide = e.fresh("half_wide");
      e.node("Cast", [raw], [wide], { to: FLOAT });
      const rounded = e.fresh("half_rounded");
      emitRoundToHalf(e, wide, rounded);
      e.node("Cast", [rounded], [out], { to: FLOAT16 });
    });
  };
}

/** Runs `f` (building and creating sessions) with float16 storage emulated; restores the op table after. */
export async function withHalfStorage<T>(f: () => Promise<T>): Promise<T> {
  const saved = { ...PRIMITIVES };
  for (const [op, def] of Object.entries(PRIMITIVES)) {
    if (def.emit) PRIMITIVES[op] = { ...def, emit: halfStorage(def.emit) };
  }
  try {
    return await f();
  } finally {
    for (const op of Object.keys(PRIMITIVES)) PRIMITIVES[op] = saved[op] as OpDef;
  }
}
