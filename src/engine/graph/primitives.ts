/**
 * The primitive ops: each entry holds the forward (shape/dtype inference and its ONNX emission) and
 * the vector-Jacobian product side by side. VJPs are written with the public ops (ops.ts), so the
 * backward pass is an ordinary part of the graph. Composite ops (composites.ts) are defined on top.
 */
import { BYTES_PER_ELEMENT, type DType, isFloat, numel, ONNX_DTYPE } from "./dtype.js";
import type { Node, OutputSpec, Tensor } from "./graph.js";
import type { Emitter, OnnxAttr, OpDef } from "./op.js";
import {
  add,
  cast,
  concat,
  conv2dRaw,
  convTranspose2dRaw,
  cos,
  div,
  equal,
  exp,
  expand,
  gather,
  greater,
  less,
  matmul,
  mul,
  neg,
  pad,
  pow,
  reduceMean,
  reduceSum,
  reshape,
  sin,
  slice,
  sub,
  sumToShape,
  transpose,
  where,
} from "./ops.js";
import { broadcastShapes, fmt, opError, sameShape } from "./shape.js";

const I = (node: Node, i: number) => node.inputs[i] as Tensor;
const O = (node: Node, i = 0) => node.outputs[i] as Tensor;

function simple(opType: string, attrs?: (node: Node) => Record<string, OnnxAttr>) {
  return (e: Emitter, node: Node) =>
    e.node(
      opType,
      node.inputs.map((t) => e.name(t)),
      node.outputs.map((t) => e.name(t)),
      attrs?.(node),
    );
}

function requireFloat(op: string, inputs: readonly Tensor[], t: Tensor): void {
  if (!isFloat(t.dtype))
    throw opError(op, inputs, `${t} must be a float tensor (float32, float16 or float64)`);
}

// ---------------------------------------------------------------- elementwise

/** The public op's name for an ONNX op type in error messages ("Add" → "add"). */
const publicName = (opType: string) => opType.charAt(0).toLowerCase() + opType.slice(1);

function unary(opType: string, vjp: (x: Tensor, y: Tensor, g: Tensor) => Tensor, floatOnly = true): OpDef {
  return {
    infer: ([x]) => {
      const t = x as Tensor;
      if (floatOnly) requireFloat(publicName(opType), [t], t);
      else if (t.dtype === "bool") throw opError(publicName(opType), [t], "bool tensors are not numbers");
      return [{ dtype: t.dtype, shape: t.shape }];
    },
    emit: simple(opType),
    vjp: (node, [g]) => [vjp(I(node, 0), O(node), g as Tensor)],
  };
}

function binaryShape(opType: string, inputs: readonly Tensor[], allowBool = false): number[] {
  const op = publicName(opType);
  const [a, b] = inputs as [Tensor, Tensor];
  if (a.dtype !== b.dtype)
    throw opError(op, inputs, `dtypes differ (${a.dtype} vs ${b.dtype}); cast one first`);
  if (!allowBool && a.dtype === "bool") throw opError(op, inputs, "bool tensors are not numbers");
  const s = broadcastShapes([a.shape, b.shape]);
  if (!s) throw opError(op, inputs, `shapes ${fmt(a.shape)} and ${fmt(b.shape)} do not broadcast`);
  return s;
}

function binary(
  opType: string,
  vjp: (
    a: Tensor,
    b: Tensor,
    y: Tensor,
    g: Tensor,
    needs: readonly boolean[],
    node: Node,
  ) => [Tensor | null, Tensor | null],
): OpDef {
  return {
    infer: (inputs) => [{ dtype: (inputs[0] as Tensor).dtype, shape: binaryShape(opType, inputs) }],
    emit: simple(opType),
    vjp: (node, [g], needs) => {
      const a = I(node, 0);
      const b = I(node, 1);
      const [ga, gb] = vjp(a, b, O(node), g as Tensor, needs, node);
      return [
        ga && needs[0] ? sumToShape(ga, a.shape) : null,
        gb && needs[1] ? sumToShape(gb, b.shape) : null,
      ];
    },
  };
}

function comparison(opType: string): OpDef {
  return {
    infer: (inputs) => [{ dtype: "bool", shape: binaryShape(opType, inputs, opType === "Equal") }],
    differentiable: () => false,
    emit: simple(opType),
  };
}

// ---------------------------------------------------------------- convolution helpers

export interface ConvAttrs {
  strides: [number, number];
  pads: [number, number, number, number]; // top, left, bottom, right (ONNX order)
  dilations: [number, number];
  group: number;
  outputPadding?: [number, number];
}

function convAttrs(node: Node): Record<string, OnnxAttr> {
  const a = node.attrs as unknown as ConvAttrs;
  const w = I(node, 1);
  const out: Record<string, OnnxAttr> = {
    strides: a.strides,
    pads: a.pads,
    dilations: a.dilations,
    group: a.group,
    kernel_shape: [w.shape[2] as number, w.shape[3] as number],
  };
  if (a.outputPadding) out.output_padding = a.outputPadding;
  return out;
}

function checkConvInputs(op: string, inputs: readonly Tensor[], wIn: number, group: number): void {
  const [x, w, b] = inputs as [Tensor, Tensor, Tensor | undefined];
  requireFloat(op, inputs, x);
  if (w.dtype !== x.dtype || (b && b.dtype !== x.dtype))
    throw opError(op, inputs, "x, w and b must share a dtype");
  if (x.rank !== 4 || w.rank !== 4) throw opError(op, inputs, "x must be [N,C,H,W] and w 4-D");
  if (!Number.isInteger(group) || group < 1 || (x.shape[1] as number) % group !== 0) {
    throw opError(op, inputs, `groups=${group} must divide the ${x.shape[1]} input channels`);
  }
  if (wIn !== (x.shape[1] as number))
    throw opError(op, inputs, `w expects ${wIn} input channels, x has ${x.shape[1]}`);
}

/** dL/dx of a convolution. At stride 1 it is a plain Conv of gy with the kernel flipped and its in/out
 *  channels swapped (onnxruntime's Conv is much faster than its ConvTranspose: 1.8× on CPU); otherwise
 *  ConvTranspose with the output padding that restores x's size. */
function convInputGrad(gy: Tensor, x: Tensor, w: Tensor, a: ConvAttrs): Tensor {
  const [O, Cgi, KH, KW] = w.shape as [number, number, number, number];
  const G = a.group;
  const reachH = a.dilations[0] * (KH - 1);
  const reachW = a.dilations[1] * (KW - 1);
  const pads: ConvAttrs["pads"] = [
    reachH - a.pads[0],
    reachW - a.pads[1],
    reachH - a.pads[2],
    reachW - a.pads[3],
  ];
  if (a.strides[0] === 1 && a.strides[1] === 1 && pads.every((p) => p >= 0)) {
    let wt = reshape(transpose(reshape(w, [G, O / G, Cgi, KH, KW]), [0, 2, 1, 3, 4]), [
      G * Cgi,
      O / G,
      KH,
      KW,
    ]);
    const reversed = (n: number) =>
      w.graph.constant(
        Array.from({ length: n }, (_, i) => n - 1 - i),
        "int64",
        [n],
      );
    if (KH > 1) wt = gather(wt, reversed(KH), 2);
    if (KW > 1) wt = gather(wt, reversed(KW), 3);
    return conv2dRaw(gy, wt, { strides: [1, 1], pads, dilations: a.dilations, group: G });
  }
  const [, , OH, OW] = gy.shape as [number, number, number, number];
  const span = (o: number, k: number, d: number, s: number, p: number) => (o - 1) * s - p + d * (k - 1) + 1;
  const opH = (x.shape[2] as number) - span(OH, KH, a.dilations[0], a.strides[0], a.pads[0] + a.pads[2]);
  const opW = (x.shape[3] as number) - span(OW, KW, a.dilations[1], a.strides[1], a.pads[1] + a.pads[3]);
  return convTranspose2dRaw(gy, w, { ...a, outputPadding: [opH, opW] });
}

/** dL/dw of a convolution, given its input x and output gradient gy: one matmul per kernel offset over
 *  strided slices of the padded input (no im2col buffer, and plain MatMul runs well on every provider). */
function convWeightGrad(x: Tensor, gy: Tensor, wShape: readonly number[], a: ConvAttrs): Tensor {
  const [N, Cin] = x.shape as [number, number];
  const [Cout, Cgi, KH, KW] = wShape as [number, number, number, number];
  const [, , OH, OW] = gy.shape as [number, number, number, number];
  const G = a.group;
  const Cgo = Cout / G;
  const P = OH * OW;
  const [pt, pl, pb, pr] = a.pads;
  const xp = pt || pl || pb || pr ? pad(x, [0, 0, pt, pl, 0, 0, pb, pr]) : x;
  const g2 = reshape(transpose(reshape(gy, [N, G, Cgo, P]), [1, 2, 0, 3]), [G, Cgo, N * P]);
  const parts: Tensor[] = [];
  for (let kh = 0; kh < KH; kh++) {
    for (let kw = 0; kw < KW; kw++) {
      const h0 = kh * a.dilations[0];
      const w0 = kw * a.dilations[1];
      const xs = slice(
        xp,
        [h0, w0],
        [h0 + (OH - 1) * a.strides[0] + 1, w0 + (OW - 1) * a.strides[1] + 1],
        [2, 3],
        a.strides,
      );
      // [G, Cgi, N·P] (a plain reshape for N = 1); the matmul's transposed operand fuses into it.
      const xs2 = reshape(transpose(reshape(xs, [N, G, Cin / G, P]), [1, 2, 0, 3]), [G, Cgi, N * P]);
      parts.push(reshape(matmul(g2, swapLast2(xs2)), [1, G, Cgo, Cgi]));
    }
  }
  // Stacked along a new leading axis (contiguous copies), then the offsets moved last.
  const stacked = parts.length === 1 ? (parts[0] as Tensor) : concat(parts, 0);
  return reshape(transpose(stacked, [1, 2, 3, 0]), [Cout, Cgi, KH, KW]);
}

/** im2col buffers above this stay direct Convs (the VAE's full-resolution layers: ~1 GB of patches). */
const IM2COL_MAX_BYTES = 256 * 2 ** 20;

/**
 * A k×k convolution (one group) as im2col + MatMul: the padded input flattened to [N, C, Hp·Wp], one
 * Gather of the k·k shifted (strided, dilated) windows → [N, C·k·k, OH·OW] (rows in the weight's own
 * (c, kh, kw) order), then w[O, C·k·k] @ patches + bias. Four kernels (Pad, Gather, MatMul, Add) where
 * the provider's MatMul is faster than its Conv. Returns false (nothing emitted) where it does not apply:
 * 1×1 kernels (already a MatMul inside the provider's Conv), groups, or a patch buffer over the limit.
 */
function emitConvAsMatMul(e: Emitter, node: Node): boolean {
  const a = node.attrs as unknown as ConvAttrs;
  const [x, w, b] = node.inputs as [Tensor, Tensor, Tensor | undefined];
  const [N, C, H, W] = x.shape as [number, number, number, number];
  const [Co, , KH, KW] = w.shape as [number, number, number, number];
  const [, , OH, OW] = O(node).shape as [number, number, number, number];
  const K = KH * KW;
  const P = OH * OW;
  if (a.group !== 1 || K === 1 || N * C * K * P * BYTES_PER_ELEMENT[x.dtype] > IM2COL_MAX_BYTES) return false;
  const [pt, pl, pb, pr] = a.pads;
  const Hp = H + pt + pb;
  const Wp = W + pl + pr;
  let xp = e.name(x);
  if (pt || pl || pb || pr) {
    xp = e.fresh("im2col_pad");
    e.node("Pad", [e.name(x), e.ints([0, 0, pt, pl, 0, 0, pb, pr])], [xp], { mode: "constant" });
  }
  const flat = e.fresh("im2col_flat");
  e.node("Reshape", [xp, e.ints([N, C, Hp * Wp])], [flat]);
  const index: number[] = [];
  for (let kh = 0; kh < KH; kh++)
    for (let kw = 0; kw < KW; kw++)
      for (let oh = 0; oh < OH; oh++)
        for (let ow = 0; ow < OW; ow++) {
          const h = oh * a.strides[0] + kh * a.dilations[0];
          index.push(h * Wp + ow * a.strides[1] + kw * a.dilations[1]);
        }
  const gathered = e.fresh("im2col_gathered");
  e.node("Gather", [flat, e.int64s(index, "im2col_index")], [gathered], { axis: 2 });
  const patches = e.fresh("im2col_patches");
  e.node("Reshape", [gathered, e.ints([N, C * K, P])], [patches]);
  const w2 = e.fresh("im2col_w");
  e.node("Reshape", [e.name(w), e.ints([Co, C * K])], [w2]);
  const y = e.fresh("im2col_y");
  e.node("MatMul", [w2, patches], [y]);
  let out = y;
  if (b) {
    const b2 = e.fresh("im2col_b");
    e.node("Reshape", [e.name(b), e.ints([Co, 1])], [b2]);
    out = e.fresh("im2col_biased");
    e.node("Add", [y, b2], [out]);
  }
  e.node("Reshape", [out, e.ints([N, Co, OH, OW])], [e.name(O(node))]);
  return true;
}

function convOut(size: number, k: number, s: number, d: number, p0: number, p1: number): number {
  return Math.floor((size + p0 + p1 - d * (k - 1) - 1) / s) + 1;
}

/** Gradient of a strided slice: the output gradient spread back (zeros between steps) and padded into place. */
function unslice(g: Tensor, inShape: readonly number[], a: SliceAttrs): Tensor {
  let t = g;
  const padsBegin = inShape.map(() => 0);
  const padsEnd = inShape.map(() => 0);
  a.axes.forEach((axis, k) => {
    const start = a.starts[k] as number;
    const step = a.steps[k] as number;
    const n = t.shape[axis] as number;
    let len = n;
    if (step > 1) {
      const s = [...t.shape];
      const wide = [...s.slice(0, axis + 1), 1, ...s.slice(axis + 1)];
      const pads = wide.map(() => 0).concat(wide.map(() => 0));
      pads[wide.length + axis + 1] = step - 1;
      len = n * step;
      t = reshape(pad(reshape(t, wide), pads), [...s.slice(0, axis), len, ...s.slice(axis + 1)]);
      const room = (inShape[axis] as number) - start;
      if (len > room) {
        t = slice(t, [0], [room], [axis]);
        len = room;
      }
    }
    padsBegin[axis] = start;
    padsEnd[axis] = (inShape[axis] as number) - start - len;
  });
  return padsBegin.some((p) => p) || padsEnd.some((p) => p) ? pad(t, [...padsBegin, ...padsEnd]) : t;
}

export interface SliceAttrs {
  axes: number[];
  starts: number[];
  ends: number[];
  steps: number[];
}

/** Nearest-neighbour source index of output position i when resizing `inSize` → `outSize` (ONNX asymmetric/floor). */
export function nearestSource(i: number, inSize: number, outSize: number): number {
  return Math.min(inSize - 1, Math.floor(i / Math.fround(outSize / inSize)));
}

/** [outSize, inSize] 0/1 matrix that picks each output's nearest source (the Jacobian of nearest resizing). */
function selection(inSize: number, outSize: number, dtype: DType, g: Tensor): Tensor {
  const m = new Array<number>(outSize * inSize).fill(0);
  for (let i = 0; i < outSize; i++) m[i * inSize + nearestSource(i, inSize, outSize)] = 1;
  return g.graph.constant(m, dtype, [outSize, inSize]);
}

function reduceAttrs(node: Node) {
  return node.attrs as { axes: number[]; keepdims: boolean };
}

function reducedShape(shape: readonly number[], axes: readonly number[], keepdims: boolean): number[] {
  return keepdims
    ? shape.map((d, i) => (axes.includes(i) ? 1 : d))
    : shape.filter((_, i) => !axes.includes(i));
}

/** Output gradient of a reduction brought back to the input's shape. */
function unreduce(g: Tensor, node: Node): Tensor {
  const x = I(node, 0);
  const { axes } = reduceAttrs(node);
  return expand(reshape(g, reducedShape(x.shape, axes, true)), x.shape);
}

function reduction(name: string): OpDef["infer"] {
  return (inputs, attrs) => {
    const x = inputs[0] as Tensor;
    requireFloat(name, inputs, x);
    const { axes, keepdims } = attrs as { axes: number[]; keepdims: boolean };
    return [{ dtype: x.dtype, shape: reducedShape(x.shape, axes, keepdims) }];
  };
}

function same(x: Tensor): OutputSpec[] {
  return [{ dtype: x.dtype, shape: x.shape }];
}

// ---------------------------------------------------------------- the table

export const PRIMITIVES: Record<string, OpDef> = {
  Neg: unary("Neg", (_x, _y, g) => neg(g), false),
  Exp: unary("Exp", (_x, y, g) => mul(g, y)),
  Log: unary("Log", (x, _y, g) => div(g, x)),
  Sqrt: unary("Sqrt", (_x, y, g) => div(mul(g, 0.5), y)),
  Sigmoid: unary("Sigmoid", (_x, y, g) => mul(g, mul(y, sub(1, y)))),
  Tanh: unary("Tanh", (_x, y, g) => mul(g, sub(1, mul(y, y)))),
  Sin: unary("Sin", (x, _y, g) => mul(g, cos(x))),
  Cos: unary("Cos", (x, _y, g) => neg(mul(g, sin(x)))),
  Erf: unary("Erf", (x, _y, g) => mul(g, mul(exp(neg(mul(x, x))), 2 / Math.sqrt(Math.PI)))),
  Abs: unary("Abs", (x, _y, g) => where(greater(x, 0), g, neg(g)), false),
  Relu: unary("Relu", (x, _y, g) => where(greater(x, 0), g, 0)),
  /** Zero gradient almost everywhere: not differentiable, so no gradient flows through it. */
  Sign: { ...unary("Sign", (x) => x, false), differentiable: () => false, vjp: undefined },

  Add: binary("Add", (_a, _b, _y, g) => [g, g]),
  Sub: binary("Sub", (_a, _b, _y, g, needs) => [g, needs[1] ? neg(g) : null]),
  Mul: binary("Mul", (a, b, _y, g, needs) => [needs[0] ? mul(g, b) : null, needs[1] ? mul(g, a) : null]),
  Div: binary("Div", (_a, b, y, g, needs) => {
    const ga = div(g, b);
    return [ga, needs[1] ? neg(mul(ga, y)) : null];
  }),
  /** x ** p with a constant exponent p (pow() only builds it so). */
  Pow: {
    ...binary("Pow", (a, _b, _y, g, _needs, node) => {
      const p = node.attrs.exponent as number;
      // x⁰ is constant (and 0·x⁻¹ would be NaN at x = 0); x¹'s derivative needs no power.
      if (p === 0) return [null, null];
      return [p === 1 ? g : mul(g, mul(pow(a, p - 1), p)), null];
    }),
    differentiable: (i) => i === 0,
  },

  Less: comparison("Less"),
  Greater: comparison("Greater"),
  Equal: comparison("Equal"),

  Where: {
    infer: (inputs) => {
      const [c, a, b] = inputs as [Tensor, Tensor, Tensor];
      if (c.dtype !== "bool") throw opError("where", inputs, "the condition must be bool");
      if (a.dtype !== b.dtype) throw opError("where", inputs, `dtypes differ (${a.dtype} vs ${b.dtype})`);
      const s = broadcastShapes([c.shape, a.shape, b.shape]);
      if (!s) throw opError("where", inputs, "shapes do not broadcast");
      return [{ dtype: a.dtype, shape: s }];
    },
    differentiable: (i) => i > 0,
    emit: simple("Where"),
    vjp: (node, [g], needs) => {
      const [c, a, b] = node.inputs as [Tensor, Tensor, Tensor];
      const gg = g as Tensor;
      return [
        null,
        needs[1] ? sumToShape(where(c, gg, 0), a.shape) : null,
        needs[2] ? sumToShape(where(c, 0, gg), b.shape) : null,
      ];
    },
  },

  Cast: {
    infer: ([x], attrs) => [{ dtype: attrs.to as DType, shape: (x as Tensor).shape }],
    differentiable: (_i, node) => isFloat(I(node, 0).dtype) && isFloat(O(node).dtype),
    emit: (e, node) => {
      const to = node.attrs.to as DType;
      e.node("Cast", [e.name(I(node, 0))], [e.name(O(node))], { to: ONNX_DTYPE[to] });
    },
    vjp: (node, [g]) => [cast(g as Tensor, I(node, 0).dtype)],
  },

  MatMul: {
    infer: (inputs) => {
      const [a, b] = inputs as [Tensor, Tensor];
      requireFloat("matmul", inputs, a);
      if (a.dtype !== b.dtype) throw opError("matmul", inputs, "dtypes differ");
      if (a.rank < 2 || b.rank < 2) throw opError("matmul", inputs, "both operands need rank >= 2");
      if (a.shape[a.rank - 1] !== b.shape[b.rank - 2]) {
        throw opError(
          "matmul",
          inputs,
          `inner dimensions ${a.shape[a.rank - 1]} and ${b.shape[b.rank - 2]} differ`,
        );
      }
      const batch = broadcastShapes([a.shape.slice(0, -2), b.shape.slice(0, -2)]);
      if (!batch) throw opError("matmul", inputs, "batch dimensions do not broadcast");
      return [
        { dtype: a.dtype, shape: [...batch, a.shape[a.rank - 2] as number, b.shape[b.rank - 1] as number] },
      ];
    },
    emit: simple("MatMul"),
    vjp: (node, [g], needs) => {
      const a = I(node, 0);
      const b = I(node, 1);
      const gg = g as Tensor;
      let ga: Tensor | null = null;
      let gb: Tensor | null = null;
      if (needs[0]) ga = sumToShape(matmul(gg, swapLast2(b)), a.shape);
      if (needs[1]) {
        if (b.rank === 2 && a.rank > 2) {
          // x[..., K] @ w[K, N]: fold the batch into the rows, one matmul instead of a batched one + a sum.
          const k = a.shape[a.rank - 1] as number;
          const n = b.shape[1] as number;
          gb = matmul(swapLast2(reshape(a, [-1, k])), reshape(gg, [-1, n]));
        } else gb = sumToShape(matmul(swapLast2(a), gg), b.shape);
      }
      return [ga, gb];
    },
  },

  Conv: {
    infer: (inputs, attrs) => {
      const a = attrs as unknown as ConvAttrs;
      const [x, w, b] = inputs as [Tensor, Tensor, Tensor | undefined];
      checkConvInputs("conv2d", inputs, (w.shape[1] ?? 0) * a.group, a.group);
      const [N, , H, W] = x.shape as [number, number, number, number];
      const [O, , KH, KW] = w.shape as [number, number, number, number];
      if (O % a.group !== 0)
        throw opError("conv2d", inputs, `groups=${a.group} must divide the ${O} output channels`);
      if (b && !sameShape(b.shape, [O])) throw opError("conv2d", inputs, `bias must be [${O}]`);
      const OH = convOut(H, KH, a.strides[0], a.dilations[0], a.pads[0], a.pads[2]);
      const OW = convOut(W, KW, a.strides[1], a.dilations[1], a.pads[1], a.pads[3]);
      if (OH < 1 || OW < 1) throw opError("conv2d", inputs, "the kernel is larger than the padded input");
      return [{ dtype: x.dtype, shape: [N, O, OH, OW] }];
    },
    emit: (e, node) => {
      if (!(e.convAsMatMul && emitConvAsMatMul(e, node))) simple("Conv", convAttrs)(e, node);
    },
    vjp: (node, [g], needs) => {
      const [x, w, b] = node.inputs as [Tensor, Tensor, Tensor | undefined];
      const a = node.attrs as unknown as ConvAttrs;
      const gg = g as Tensor;
      let gx: Tensor | null = null;
      if (needs[0]) gx = convInputGrad(gg, x, w, a);
      return [
        gx,
        needs[1] ? convWeightGrad(x, gg, w.shape, a) : null,
        b && needs[2] ? reduceSum(gg, [0, 2, 3], false) : null,
      ];
    },
  },

  /** The adjoint of Conv (w: [Cin, Cout/groups, KH, KW]); Conv's input gradient, and public as an op. */
  ConvTranspose: {
    infer: (inputs, attrs) => {
      const a = attrs as unknown as ConvAttrs;
      const [x, w, b] = inputs as [Tensor, Tensor, Tensor | undefined];
      checkConvInputs("convTranspose2d", inputs, w.shape[0] as number, a.group);
      const [N, , H, W] = x.shape as [number, number, number, number];
      const [, Og, KH, KW] = w.shape as [number, number, number, number];
      const O = Og * a.group;
      if (b && !sameShape(b.shape, [O])) throw opError("convTranspose2d", inputs, `bias must be [${O}]`);
      const op = a.outputPadding ?? [0, 0];
      if (
        op[0] >= Math.max(a.strides[0], a.dilations[0]) ||
        op[1] >= Math.max(a.strides[1], a.dilations[1])
      ) {
        throw opError(
          "convTranspose2d",
          inputs,
          `output padding ${fmt(op)} must be smaller than the stride or dilation`,
        );
      }
      const OH = (H - 1) * a.strides[0] - a.pads[0] - a.pads[2] + a.dilations[0] * (KH - 1) + 1 + op[0];
      const OW = (W - 1) * a.strides[1] - a.pads[1] - a.pads[3] + a.dilations[1] * (KW - 1) + 1 + op[1];
      return [{ dtype: x.dtype, shape: [N, O, OH, OW] }];
    },
    emit: simple("ConvTranspose", convAttrs),
    vjp: (node, [g], needs) => {
      const [x, w, b] = node.inputs as [Tensor, Tensor, Tensor | undefined];
      const { outputPadding: _, ...a } = node.attrs as unknown as ConvAttrs;
      const gg = g as Tensor;
      return [
        needs[0] ? conv2dRaw(gg, w, a) : null,
        needs[1] ? convWeightGrad(gg, x, w.shape, a) : null,
        b && needs[2] ? reduceSum(gg, [0, 2, 3], false) : null,
      ];
    },
  },

  Reshape: {
    infer: ([x], attrs) => [{ dtype: (x as Tensor).dtype, shape: attrs.shape as number[] }],
    emit: (e, node) => e.node("Reshape", [e.name(I(node, 0)), e.ints(O(node).shape)], [e.name(O(node))]),
    vjp: (node, [g]) => [reshape(g as Tensor, I(node, 0).shape)],
  },

  Transpose: {
    infer: ([x], attrs) => {
      const perm = attrs.perm as number[];
      return [{ dtype: (x as Tensor).dtype, shape: perm.map((p) => (x as Tensor).shape[p] as number) }];
    },
    emit: simple("Transpose", (node) => ({ perm: node.attrs.perm as number[] })),
    vjp: (node, [g]) => {
      const perm = node.attrs.perm as number[];
      const inv = perm.map((_, i) => perm.indexOf(i));
      return [transpose(g as Tensor, inv)];
    },
  },

  Expand: {
    infer: ([x], attrs) => [{ dtype: (x as Tensor).dtype, shape: attrs.shape as number[] }],
    emit: (e, node) => e.node("Expand", [e.name(I(node, 0)), e.ints(O(node).shape)], [e.name(O(node))]),
    vjp: (node, [g]) => [sumToShape(g as Tensor, I(node, 0).shape)],
  },

  Concat: {
    infer: (inputs, attrs) => {
      const axis = attrs.axis as number;
      const first = inputs[0] as Tensor;
      let total = 0;
      for (const t of inputs) {
        if (t.dtype !== first.dtype) throw opError("concat", inputs, "dtypes differ");
        if (t.rank !== first.rank || t.shape.some((d, i) => i !== axis && d !== first.shape[i])) {
          throw opError("concat", inputs, `shapes differ outside axis ${axis}`);
        }
        total += t.shape[axis] as number;
      }
      return [{ dtype: first.dtype, shape: first.shape.map((d, i) => (i === axis ? total : d)) }];
    },
    emit: simple("Concat", (node) => ({ axis: node.attrs.axis as number })),
    vjp: (node, [g], needs) => {
      const axis = node.attrs.axis as number;
      let at = 0;
      return node.inputs.map((t, i) => {
        const start = at;
        at += t.shape[axis] as number;
        return needs[i] ? slice(g as Tensor, [start], [at], [axis]) : null;
      });
    },
  },

  Slice: {
    infer: ([x], attrs) => {
      const a = attrs as unknown as SliceAttrs;
      const shape = [...(x as Tensor).shape];
      a.axes.forEach((axis, k) => {
        shape[axis] = Math.max(
          0,
          Math.ceil(((a.ends[k] as number) - (a.starts[k] as number)) / (a.steps[k] as number)),
        );
      });
      return [{ dtype: (x as Tensor).dtype, shape }];
    },
    emit: (e, node) => {
      const a = node.attrs as unknown as SliceAttrs;
      const ins = [e.name(I(node, 0)), e.ints(a.starts), e.ints(a.ends), e.ints(a.axes)];
      if (a.steps.some((s) => s !== 1)) ins.push(e.ints(a.steps));
      e.node("Slice", ins, [e.name(O(node))]);
    },
    vjp: (node, [g]) => [unslice(g as Tensor, I(node, 0).shape, node.attrs as unknown as SliceAttrs)],
  },

  /** Constant padding; pads in ONNX order (all begins, then all ends), non-negative. */
  Pad: {
    infer: ([x], attrs) => {
      const p = attrs.pads as number[];
      const t = x as Tensor;
      return [
        { dtype: t.dtype, shape: t.shape.map((d, i) => d + (p[i] as number) + (p[i + t.rank] as number)) },
      ];
    },
    emit: (e, node) => {
      const x = I(node, 0);
      const value = node.attrs.value as number;
      const ins = [e.name(x), e.ints(node.attrs.pads as number[])];
      if (value !== 0) ins.push(e.fill(x.dtype, [], value));
      e.node("Pad", ins, [e.name(O(node))], { mode: "constant" });
    },
    vjp: (node, [g]) => {
      const x = I(node, 0);
      const p = node.attrs.pads as number[];
      const axes = x.shape.map((_, i) => i);
      return [
        slice(
          g as Tensor,
          axes.map((i) => p[i] as number),
          axes.map((i) => (p[i] as number) + (x.shape[i] as number)),
          axes,
        ),
      ];
    },
  },

  Gather: {
    infer: (inputs, attrs) => {
      const [x, idx] = inputs as [Tensor, Tensor];
      if (idx.dtype !== "int64" && idx.dtype !== "int32")
        throw opError("gather", inputs, "indices must be int64 or int32");
      const axis = attrs.axis as number;
      return [
        { dtype: x.dtype, shape: [...x.shape.slice(0, axis), ...idx.shape, ...x.shape.slice(axis + 1)] },
      ];
    },
    differentiable: (i) => i === 0,
    emit: simple("Gather", (node) => ({ axis: node.attrs.axis as number })),
    vjp: (node, [g]) => {
      const [x, idx] = node.inputs as [Tensor, Tensor];
      // Scatter-add as a matmul with the one-hot of the indices: [V, N] @ [pre, N, post] → [pre, V, post].
      const axis = node.attrs.axis as number;
      const V = x.shape[axis] as number;
      const N = numel(idx.shape);
      const pre = numel(x.shape.slice(0, axis));
      const post = numel(x.shape.slice(axis + 1));
      const ids = x.graph.constant(
        Array.from({ length: V }, (_, i) => i),
        idx.dtype,
        [1, V],
      );
      const flat = reshape(idx, [N, 1]);
      const wrapped = where(less(flat, 0), add(flat, V), flat); // Gather counts negative indices from the end
      const onehot = cast(equal(wrapped, ids), x.dtype);
      const gx = matmul(transpose(onehot, [1, 0]), reshape(g as Tensor, [pre, N, post]));
      return [reshape(gx, x.shape), null];
    },
  },

  ReduceSum: {
    infer: reduction("reduceSum"),
    emit: (e, node) => {
      const { axes, keepdims } = reduceAttrs(node);
      e.node("ReduceSum", [e.name(I(node, 0)), e.ints(axes)], [e.name(O(node))], {
        keepdims: keepdims ? 1 : 0,
      });
    },
    vjp: (node, [g]) => [unreduce(g as Tensor, node)],
  },

  ReduceMean: {
    infer: reduction("reduceMean"),
    emit: simple("ReduceMean", (node) => ({
      axes: reduceAttrs(node).axes,
      keepdims: reduceAttrs(node).keepdims ? 1 : 0,
    })),
    vjp: (node, [g]) => {
      const x = I(node, 0);
      const count = reduceAttrs(node).axes.reduce((n, a) => n * (x.shape[a] as number), 1);
      return [unreduce(div(g as Tensor, count), node)];
    },
  },

  ReduceMax: {
    infer: reduction("reduceMax"),
    emit: simple("ReduceMax", (node) => ({
      axes: reduceAttrs(node).axes,
      keepdims: reduceAttrs(node).keepdims ? 1 : 0,
    })),
    vjp: (node, [g]) => {
      // Ties share the gradient equally (as torch's amax does).
      const x = I(node, 0);
      const hit = cast(equal(x, unreduce(O(node), node)), x.dtype);
      const count = reduceSum(hit, reduceAttrs(node).axes, true);
      return [mul(unreduce(g as Tensor, node), div(hit, expand(count, x.shape)))];
    },
  },

  Softmax: {
    infer: ([x]) => {
      requireFloat("softmax", [x as Tensor], x as Tensor);
      return same(x as Tensor);
    },
    emit: simple("Softmax", (node) => ({ axis: node.attrs.axis as number })),
    vjp: (node, [g]) => {
      const y = O(node);
      const gy = mul(g as Tensor, y);
      return [sub(gy, mul(y, reduceSum(gy, [node.attrs.axis as number], true)))];
    },
  },

  /**
   * (x − mean)/σ with σ = √(var + eps) over the axes from `axis` on, σ as a second output: the
   * differentiable core of the norms. The forward is the two-pass computation the expanded form did
   * (onnxruntime's LayerNormalization takes var = E[x²] − mean², which loses digits on offset inputs);
   * the VJP is one formula, dx = (ḡ − mean(ḡ) − y·mean(ḡ·y))/σ (exact, eps included), 7 kernels where
   * differentiating the expansion took about 20.
   */
  Standardize: {
    infer: ([x], attrs) => {
      const t = x as Tensor;
      requireFloat("standardize", [t], t);
      const axis = attrs.axis as number;
      return [
        { dtype: t.dtype, shape: t.shape },
        { dtype: t.dtype, shape: t.shape.map((d, i) => (i < axis ? d : 1)) },
      ];
    },
    emit: (e, node) => {
      const x = I(node, 0);
      const axes = x.shape.map((_, i) => i).slice(node.attrs.axis as number);
      const [y, sigma] = node.outputs.map((t) => e.name(t)) as [string, string];
      const [mean, centered, squared, variance, shifted] = ["mean", "centered", "sq", "var", "var_eps"].map(
        (h) => e.fresh(`std_${h}`),
      ) as [string, string, string, string, string];
      e.node("ReduceMean", [e.name(x)], [mean], { axes, keepdims: 1 });
      e.node("Sub", [e.name(x), mean], [centered]);
      e.node("Mul", [centered, centered], [squared]);
      e.node("ReduceMean", [squared], [variance], { axes, keepdims: 1 });
      e.node("Add", [variance, e.fill(x.dtype, [], node.attrs.eps as number)], [shifted]);
      e.node("Sqrt", [shifted], [sigma]);
      e.node("Div", [centered, sigma], [y]);
    },
    vjp: (node, [g]) => {
      const y = O(node, 0);
      const gg = g as Tensor;
      const axes = y.shape.map((_, i) => i).slice(node.attrs.axis as number);
      const centered = sub(gg, reduceMean(gg, axes, true));
      return [div(sub(centered, mul(y, reduceMean(mul(gg, y), axes, true))), O(node, 1))];
    },
  },

  /** Nearest-neighbour resize of the last two axes to a given size (torch's F.interpolate(mode="nearest")). */
  Resize: {
    infer: ([x], attrs) => {
      const t = x as Tensor;
      requireFloat("upsampleNearest2d", [t], t);
      const [h, w] = attrs.size as [number, number];
      return [{ dtype: t.dtype, shape: [...t.shape.slice(0, -2), h, w] }];
    },
    emit: (e, node) => {
      const x = I(node, 0);
      const y = O(node);
      if (x.dtype === "float64") {
        // onnxruntime's CPU Resize has no float64 kernel: the same pick as two Gathers.
        const [H, W] = x.shape.slice(-2) as [number, number];
        const [OH, OW] = y.shape.slice(-2) as [number, number];
        const rows = e.fresh("resize_rows");
        const pick = (n: number, size: number) =>
          Array.from({ length: n }, (_, i) => nearestSource(i, size, n));
        e.node("Gather", [e.name(x), e.ints(pick(OH, H))], [rows], { axis: x.rank - 2 });
        e.node("Gather", [rows, e.ints(pick(OW, W))], [e.name(y)], { axis: x.rank - 1 });
        return;
      }
      e.node("Resize", [e.name(x), "", "", e.ints(y.shape)], [e.name(y)], {
        mode: "nearest",
        coordinate_transformation_mode: "asymmetric",
        nearest_mode: "floor",
      });
    },
    vjp: (node, [g]) => {
      const x = I(node, 0);
      const gg = g as Tensor;
      const [H, W] = x.shape.slice(-2) as [number, number];
      const [OH, OW] = gg.shape.slice(-2) as [number, number];
      const rows = transpose(selection(H, OH, gg.dtype, gg), [1, 0]);
      return [matmul(matmul(rows, gg), selection(W, OW, gg.dtype, gg))];
    },
  },
};

function swapLast2(t: Tensor): Tensor {
  const perm = t.shape.map((_, i) => i);
  perm[t.rank - 2] = t.rank - 1;
  perm[t.rank - 1] = t.rank - 2;
  return transpose(t, perm);
}
