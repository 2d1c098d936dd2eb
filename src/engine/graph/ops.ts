/**
 * The public ops: free functions over tensors, numpy broadcasting, validated at build time (errors name
 * the op, the shapes and the cause). Each applies a primitive of primitives.ts or a composite of
 * composites.ts, or is a short composition of them (silu, gelu, linear, split, …).
 *
 * fp16 policy: reductions and softmax given float16 compute in float32 and cast back, so norms, softmax
 * and losses built from them stay accurate in a half-precision graph.
 */
import { DTYPES, type DType, isFloat, numel } from "./dtype.js";
import { type Attrs, GraphError, type Tensor } from "./graph.js";
import { type ConvAttrs, PRIMITIVES, type SliceAttrs } from "./primitives.js";
import { broadcastShapes, fmt, normalizeAxes, opError, sameShape } from "./shape.js";

/** A tensor, or a number that becomes a scalar constant of the other operand's dtype. */
export type Operand = Tensor | number;

function prim(op: string, inputs: readonly Tensor[], attrs: Attrs = {}): Tensor {
  const def = PRIMITIVES[op];
  if (!def) throw new GraphError(`unknown primitive ${op}`);
  return (inputs[0] as Tensor).graph.apply(op, def, inputs, attrs)[0] as Tensor;
}

function lift(op: string, a: Operand, b: Operand): [Tensor, Tensor] {
  if (typeof a === "number" && typeof b === "number")
    throw new GraphError(`${op}: at least one operand must be a tensor`);
  const like = (typeof a === "number" ? b : a) as Tensor;
  const t = (v: Operand) => (typeof v === "number" ? like.graph.constant(v, like.dtype) : v);
  return [t(a), t(b)];
}

// ---------------------------------------------------------------- elementwise

export const add = (a: Operand, b: Operand): Tensor => prim("Add", lift("add", a, b));
export const sub = (a: Operand, b: Operand): Tensor => prim("Sub", lift("sub", a, b));
export const mul = (a: Operand, b: Operand): Tensor => prim("Mul", lift("mul", a, b));
export const div = (a: Operand, b: Operand): Tensor => prim("Div", lift("div", a, b));
export const neg = (x: Tensor): Tensor => prim("Neg", [x]);
export const exp = (x: Tensor): Tensor => prim("Exp", [x]);
export const log = (x: Tensor): Tensor => prim("Log", [x]);
export const sqrt = (x: Tensor): Tensor => prim("Sqrt", [x]);
export const sigmoid = (x: Tensor): Tensor => prim("Sigmoid", [x]);
export const tanh = (x: Tensor): Tensor => prim("Tanh", [x]);
export const sin = (x: Tensor): Tensor => prim("Sin", [x]);
export const cos = (x: Tensor): Tensor => prim("Cos", [x]);
export const erf = (x: Tensor): Tensor => prim("Erf", [x]);
export const abs = (x: Tensor): Tensor => prim("Abs", [x]);
export const relu = (x: Tensor): Tensor => prim("Relu", [x]);
export const sign = (x: Tensor): Tensor => prim("Sign", [x]);

/** x ** p for a constant exponent p. */
export function pow(x: Tensor, p: number): Tensor {
  return prim("Pow", [x, x.graph.constant(p, x.dtype)], { exponent: p });
}

export const less = (a: Operand, b: Operand): Tensor => prim("Less", lift("less", a, b));
export const greater = (a: Operand, b: Operand): Tensor => prim("Greater", lift("greater", a, b));
export const equal = (a: Operand, b: Operand): Tensor => prim("Equal", lift("equal", a, b));

export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const [ta, tb] = lift("where", a, b);
  return prim("Where", [cond, ta, tb]);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  if (!DTYPES.includes(dtype))
    throw opError("cast", [x], `unsupported dtype "${dtype}" (one of ${DTYPES.join(", ")})`);
  return x.dtype === dtype ? x : prim("Cast", [x], { to: dtype });
}

export const silu = (x: Tensor): Tensor => mul(x, sigmoid(x));
/** CLIP's quick_gelu: x·σ(1.702x). */
export const quickGelu = (x: Tensor): Tensor => mul(x, sigmoid(mul(x, 1.702)));

/** GELU, exact (erf) or with torch's tanh approximation. */
export function gelu(x: Tensor, approximate: "none" | "tanh" = "none"): Tensor {
  if (approximate === "tanh") {
    const inner = mul(add(x, mul(pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
    return mul(mul(x, 0.5), add(tanh(inner), 1));
  }
  return mul(mul(x, 0.5), add(erf(mul(x, Math.SQRT1_2)), 1));
}

// ---------------------------------------------------------------- linear algebra

export const matmul = (a: Tensor, b: Tensor): Tensor => prim("MatMul", [a, b]);

/** torch.nn.Linear: x[..., in] @ w[out, in]ᵀ + b[out]. */
export function linear(x: Tensor, w: Tensor, b?: Tensor | null): Tensor {
  const inputs = b ? [x, w, b] : [x, w];
  if (w.rank !== 2) throw opError("linear", inputs, "w must be [out, in]");
  if (x.shape[x.rank - 1] !== w.shape[1])
    throw opError("linear", inputs, `x's last dimension must be ${w.shape[1]}`);
  if (b && !sameShape(b.shape, [w.shape[0] as number]))
    throw opError("linear", inputs, `b must be [${w.shape[0]}]`);
  const y = matmul(x.rank === 1 ? reshape(x, [1, -1]) : x, transpose(w, [1, 0]));
  const yb = b ? add(y, b) : y;
  return x.rank === 1 ? reshape(yb, [w.shape[0] as number]) : yb;
}

export interface Conv2dOptions {
  stride?: number | readonly [number, number];
  /** Same on every side, [h, w], or [top, left, bottom, right]. */
  padding?: number | readonly number[];
  dilation?: number | readonly [number, number];
  groups?: number;
}

function pair(
  op: string,
  what: string,
  v: number | readonly number[] | undefined,
  dflt: number,
): [number, number] {
  const p = v === undefined ? [dflt, dflt] : typeof v === "number" ? [v, v] : v;
  if (p.length !== 2 || !p.every((n) => Number.isInteger(n) && n >= 1)) {
    throw new GraphError(
      `${op}: ${what} must be a positive integer or two of them, got ${JSON.stringify(v)}`,
    );
  }
  return p as [number, number];
}

function convAttrs(op: string, o: Conv2dOptions): ConvAttrs {
  const p = o.padding ?? 0;
  const pads = typeof p === "number" ? [p, p, p, p] : p.length === 2 ? [p[0], p[1], p[0], p[1]] : [...p];
  if (pads.length !== 4 || !pads.every((n) => Number.isInteger(n) && (n as number) >= 0)) {
    throw new GraphError(
      `${op}: padding must be n, [h, w] or [top, left, bottom, right] of integers >= 0, got ${JSON.stringify(p)}`,
    );
  }
  return {
    strides: pair(op, "stride", o.stride, 1),
    pads: pads as ConvAttrs["pads"],
    dilations: pair(op, "dilation", o.dilation, 1),
    group: o.groups ?? 1,
  };
}

/** torch.nn.functional.conv2d: x[N,C,H,W], w[O, C/groups, KH, KW], b[O]. */
export function conv2d(x: Tensor, w: Tensor, b?: Tensor | null, opts: Conv2dOptions = {}): Tensor {
  return conv2dRaw(x, w, convAttrs("conv2d", opts), b);
}

/** torch.nn.functional.conv_transpose2d: w[C, O/groups, KH, KW]. */
export function convTranspose2d(
  x: Tensor,
  w: Tensor,
  b?: Tensor | null,
  opts: Conv2dOptions & { outputPadding?: number | readonly [number, number] } = {},
): Tensor {
  const a = convAttrs("convTranspose2d", opts);
  const op = opts.outputPadding ?? 0;
  return convTranspose2dRaw(
    x,
    w,
    { ...a, outputPadding: typeof op === "number" ? [op, op] : [op[0], op[1]] },
    b,
  );
}

export function conv2dRaw(x: Tensor, w: Tensor, a: ConvAttrs, b?: Tensor | null): Tensor {
  return prim("Conv", b ? [x, w, b] : [x, w], a as unknown as Attrs);
}

export function convTranspose2dRaw(x: Tensor, w: Tensor, a: ConvAttrs, b?: Tensor | null): Tensor {
  return prim("ConvTranspose", b ? [x, w, b] : [x, w], a as unknown as Attrs);
}

// ---------------------------------------------------------------- reductions

function reduce(
  op: string,
  name: string,
  x: Tensor,
  axes: number | readonly number[],
  keepdims: boolean,
): Tensor {
  const list = typeof axes === "number" ? [axes] : axes;
  const norm = normalizeAxes(name, [x], list, x.rank).sort((a, b) => a - b);
  if (norm.length === 0) return x;
  if (x.dtype === "float16") return cast(reduce(op, name, cast(x, "float32"), norm, keepdims), "float16");
  return prim(op, [x], { axes: norm, keepdims });
}

export const reduceSum = (x: Tensor, axes: number | readonly number[], keepdims = false): Tensor =>
  reduce("ReduceSum", "reduceSum", x, axes, keepdims);
export const reduceMean = (x: Tensor, axes: number | readonly number[], keepdims = false): Tensor =>
  reduce("ReduceMean", "reduceMean", x, axes, keepdims);
export const reduceMax = (x: Tensor, axes: number | readonly number[], keepdims = false): Tensor =>
  reduce("ReduceMax", "reduceMax", x, axes, keepdims);

/** (x − mean)/√(var + eps) over the axes from `axis` on (biased variance, as torch's norms); float32. */
export function standardize(x: Tensor, axis: number, eps: number): Tensor {
  const [a] = normalizeAxes("standardize", [x], [axis], x.rank) as [number];
  return prim("Standardize", [x], { axis: a, eps });
}

export function softmax(x: Tensor, axis = -1): Tensor {
  const [a] = normalizeAxes("softmax", [x], [axis], x.rank) as [number];
  if (x.dtype === "float16") return cast(softmax(cast(x, "float32"), a), "float16");
  return prim("Softmax", [x], { axis: a });
}

/** Sums a broadcast result back to `shape` (the VJP of broadcasting). */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  g.shape.forEach((d, i) => {
    if (i < lead || (shape[i - lead] === 1 && d !== 1)) axes.push(i);
  });
  const summed = axes.length ? reduceSum(g, axes, true) : g;
  return reshape(summed, shape);
}

// ---------------------------------------------------------------- shapes

/** Reshape to `shape`; one entry may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1);
  const free = shape.length - known.length;
  const total = numel(x.shape);
  const rest = numel(known);
  if (
    free > 1 ||
    known.some((d) => !Number.isInteger(d) || d < 0) ||
    (free === 0 && rest !== total) ||
    (free === 1 && (rest === 0 || total % rest !== 0))
  ) {
    throw opError("reshape", [x], `cannot reshape ${total} elements to ${fmt(shape)}`);
  }
  const out = shape.map((d) => (d === -1 ? total / rest : d));
  if (sameShape(out, x.shape)) return x;
  // A reshape of a reshape is one reshape of the original.
  if (x.node?.op === "Reshape") return reshape(x.node.inputs[0] as Tensor, out);
  return prim("Reshape", [x], { shape: out });
}

export function transpose(x: Tensor, perm: readonly number[]): Tensor {
  const p = normalizeAxes("transpose", [x], perm, x.rank);
  if (p.length !== x.rank) throw opError("transpose", [x], `perm ${fmt(perm)} must name all ${x.rank} axes`);
  // A transpose of a transpose is one transpose (often none: wᵀ's gradient transposed back).
  if (x.node?.op === "Transpose") {
    const inner = x.node.attrs.perm as number[];
    return transpose(
      x.node.inputs[0] as Tensor,
      p.map((a) => inner[a] as number),
    );
  }
  if (p.every((a, i) => a === i)) return x;
  // A permutation that only moves size-1 axes keeps the memory order: a reshape does it without a copy.
  const moved = p.filter((a) => x.shape[a] !== 1);
  if (moved.every((a, i) => i === 0 || a > (moved[i - 1] as number)))
    return reshape(
      x,
      p.map((a) => x.shape[a] as number),
    );
  return prim("Transpose", [x], { perm: p });
}

export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const s = broadcastShapes([x.shape, shape]);
  if (!s || !sameShape(s, shape)) throw opError("expand", [x], `cannot broadcast to ${fmt(shape)}`);
  return sameShape(x.shape, shape) ? x : prim("Expand", [x], { shape: [...shape] });
}

export function unsqueeze(x: Tensor, axes: number | readonly number[]): Tensor {
  const list = typeof axes === "number" ? [axes] : axes;
  const rank = x.rank + list.length;
  const norm = normalizeAxes("unsqueeze", [x], list, rank);
  const shape: number[] = [];
  let k = 0;
  for (let i = 0; i < rank; i++) shape.push(norm.includes(i) ? 1 : (x.shape[k++] as number));
  return reshape(x, shape);
}

/** Drops the given size-1 axes (all size-1 axes when none are given). */
export function squeeze(x: Tensor, axes?: number | readonly number[]): Tensor {
  const list =
    axes === undefined
      ? x.shape.flatMap((d, i) => (d === 1 ? [i] : []))
      : typeof axes === "number"
        ? [axes]
        : axes;
  const norm = normalizeAxes("squeeze", [x], list, x.rank);
  for (const a of norm)
    if (x.shape[a] !== 1) throw opError("squeeze", [x], `axis ${a} has size ${x.shape[a]}, not 1`);
  return reshape(
    x,
    x.shape.filter((_, i) => !norm.includes(i)),
  );
}

export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new GraphError("concat: no tensors given");
  const [a] = normalizeAxes("concat", xs, [axis], (xs[0] as Tensor).rank) as [number];
  return xs.length === 1 ? (xs[0] as Tensor) : prim("Concat", xs, { axis: a });
}

/** numpy-style slicing: negative indices count from the end, ends are clamped, steps are positive. */
export function slice(
  x: Tensor,
  starts: readonly number[],
  ends: readonly number[],
  axes?: readonly number[],
  steps?: readonly number[],
): Tensor {
  const ax = normalizeAxes("slice", [x], axes ?? starts.map((_, i) => i), x.rank);
  if (starts.length !== ax.length || ends.length !== ax.length || (steps && steps.length !== ax.length)) {
    throw opError("slice", [x], "starts, ends, axes and steps must have the same length");
  }
  const a: SliceAttrs = { axes: ax, starts: [], ends: [], steps: [] };
  ax.forEach((axis, k) => {
    const dim = x.shape[axis] as number;
    const step = steps?.[k] ?? 1;
    if (!Number.isInteger(step) || step < 1)
      throw opError("slice", [x], `step ${step} must be a positive integer`);
    const clamp = (v: number) => Math.min(dim, Math.max(0, v < 0 ? v + dim : v));
    const s = clamp(starts[k] as number);
    a.starts.push(s);
    a.ends.push(Math.max(s, clamp(ends[k] as number)));
    a.steps.push(step);
  });
  if (a.axes.every((axis, k) => a.starts[k] === 0 && a.ends[k] === x.shape[axis] && a.steps[k] === 1))
    return x;
  return prim("Slice", [x], a as unknown as Attrs);
}

export function split(x: Tensor, sizes: readonly number[], axis: number): Tensor[] {
  const [a] = normalizeAxes("split", [x], [axis], x.rank) as [number];
  const total = sizes.reduce((s, n) => s + n, 0);
  if (total !== x.shape[a])
    throw opError("split", [x], `sizes ${fmt(sizes)} sum to ${total}, axis ${a} has ${x.shape[a]}`);
  let at = 0;
  return sizes.map((n) => {
    at += n;
    return slice(x, [at - n], [at], [a]);
  });
}

/** Constant padding; pads in ONNX order: all begins, then all ends (2 × rank entries, each >= 0). */
export function pad(x: Tensor, pads: readonly number[], value = 0): Tensor {
  if (pads.length !== 2 * x.rank || !pads.every((p) => Number.isInteger(p) && p >= 0)) {
    throw opError("pad", [x], `pads ${fmt(pads)} must be ${2 * x.rank} integers >= 0`);
  }
  return pads.every((p) => p === 0) ? x : prim("Pad", [x], { pads: [...pads], value });
}

/** x taken at `indices` along `axis` (torch.nn.Embedding for axis 0). */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  const [a] = normalizeAxes("gather", [x, indices], [axis], x.rank) as [number];
  return prim("Gather", [x, indices], { axis: a });
}

/** Nearest-neighbour upsampling of [N, C, H, W] to [N, C, outH, outW] (F.interpolate(mode="nearest")). */
export function upsampleNearest2d(x: Tensor, outH: number, outW: number): Tensor {
  if (x.rank !== 4) throw opError("upsampleNearest2d", [x], "x must be [N,C,H,W]");
  if (![outH, outW].every((d) => Number.isInteger(d) && d >= 1)) {
    throw opError("upsampleNearest2d", [x], `output size ${outH}×${outW} must be positive integers`);
  }
  if (!isFloat(x.dtype)) throw opError("upsampleNearest2d", [x], "x must be a float tensor");
  return prim("Resize", [x], { size: [outH, outW] });
}
