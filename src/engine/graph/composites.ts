/**
 * Composite ops: one node in the graph with a decomposition into primitives (which autodiff
 * differentiates) and a fused ONNX form, emitted only when no gradient flows through the node and the
 * device runs the fused kernel at that dtype.
 */
import { type DType, numel } from "./dtype.js";
import type { Attrs, Node, Tensor } from "./graph.js";
import type { Device, Emitter, OpDef } from "./op.js";
import {
  add,
  cast,
  concat,
  matmul,
  mul,
  pad,
  reduceSum,
  reshape,
  slice,
  softmax,
  standardize,
  sub,
  sumToShape,
  transpose,
} from "./ops.js";
import { broadcastShapes, fmt, opError, sameShape } from "./shape.js";

const I = (node: Node, i: number) => node.inputs[i] as Tensor;

function checkAffine(op: string, inputs: readonly Tensor[], channels: number): void {
  const [x, gamma, beta] = inputs as [Tensor, Tensor, Tensor];
  if (x.dtype !== "float32" && x.dtype !== "float64" && x.dtype !== "float16")
    throw opError(op, inputs, "x must be float32, float64 or float16");
  for (const p of [gamma, beta]) {
    if (p.dtype !== x.dtype) throw opError(op, inputs, `gamma and beta must be ${x.dtype} like x`);
    if (!sameShape(p.shape, [channels])) throw opError(op, inputs, `gamma and beta must be [${channels}]`);
  }
}

const floatKernels = (dtypes: Partial<Record<Device, DType[]>>) => (node: Node, device: Device) =>
  (dtypes[device] ?? []).includes(I(node, 0).dtype);

/**
 * A float16 norm as CUDA's own float16 kernel, which keeps the statistics in float and reads and writes
 * float16 (LayerNormalization with stash_type 1, InstanceNormalization): no Cast pair around the norm.
 * Only in graphs without gradients: in a training graph, the few norms off the gradient path running fused
 * moved the fixtures' fp16 d loss / d context from 5.8e-2 to 0.30 of the golden on CUDA (sd1;
 * ill-conditioned, but 5× and outside the parity run's bound), while the forward UNet calls stayed within
 * their tolerance (docs/PERFORMANCE.md, "fp16 norms on CUDA").
 */
const halfOnCuda = (node: Node, device: Device) =>
  device === "cuda" && I(node, 0).dtype === "float16" && !I(node, 0).graph.hasGradients;

/** A norm's fused kernels: those of `dtypes` per device, and float16 on CUDA (halfOnCuda). */
const normKernels = (dtypes: Partial<Record<Device, DType[]>>) => {
  const float = floatKernels(dtypes);
  return (node: Node, device: Device) => float(node, device) || halfOnCuda(node, device);
};

/**
 * A norm's input, on WebGPU less its mean over `axis` (its last): onnxruntime 1.29's WebGPU
 * LayerNormalization and InstanceNormalization take the variance as E[x²] − mean², which cancels where a
 * group's mean is large against its spread. Measured on lavapipe against float64, largest error over the
 * largest value: group norm of 2 values per group at mean 3 × the spread 2.1e-2, layer norm over 2 at 30 ×
 * 4.0e-3; centred first, 1.1e-7 and 8.1e-8 (the CPU provider's kernels: 6.9e-5 and 1.8e-5;
 * test/engine/runtime/webgpu.test.ts). The kernel's mean² is then rounding-small, and its own mean pass
 * corrects the rounding of this one: one ReduceMean and one Sub more, far fewer kernels than the
 * decomposition.
 */
function centeredForWebgpu(e: Emitter, x: string, axis: number): string {
  if (e.device !== "webgpu") return x;
  const [mean, centered] = [e.fresh("norm_mean"), e.fresh("norm_centered")];
  e.node("ReduceMean", [x], [mean], { axes: [axis], keepdims: 1 });
  e.node("Sub", [x, mean], [centered]);
  return centered;
}

/** The one epsilon of every InstanceNormalization emitted for WebGPU (webgpuEpsilon). */
const WEBGPU_INSTANCE_NORM_EPSILON = 1e-5;

/**
 * An InstanceNormalization's input and epsilon such that, on WebGPU, every such node carries the same
 * epsilon: onnxruntime 1.29's WebGPU kernel bakes the epsilon into a shader that it caches without it, so
 * every later node of the process runs with the first one's (measured: group norms of epsilon 1e-6 and
 * 1e-3 after one of 1e-5 came out 0.13 and 3.9 off; the fixtures' transformer norms, epsilon 1e-6 after
 * resnet norms of 1e-5, put sd2's UNet call 3.2e-2 off its golden, on lavapipe and on an H100).
 * Norm(x; ε) = Norm(s·x; s²·ε), so the input is scaled by s = √(E/ε) and the node given E; the Mul is left
 * out where ε is E already.
 */
function webgpuEpsilon(e: Emitter, x: string, dtype: DType, eps: number): [string, number] {
  const E = WEBGPU_INSTANCE_NORM_EPSILON;
  if (e.device !== "webgpu" || eps === E) return [x, eps];
  const scaled = e.fresh("norm_eps_scaled");
  e.node("Mul", [x, e.fill(dtype, [], Math.sqrt(E / eps))], [scaled]);
  return [scaled, E];
}

export const COMPOSITES: Record<string, OpDef> = {
  LayerNorm: {
    infer: (inputs) => {
      const x = inputs[0] as Tensor;
      checkAffine("layerNorm", inputs, x.shape[x.rank - 1] as number);
      return [{ dtype: x.dtype, shape: x.shape }];
    },
    decompose: (node) => {
      const x = I(node, 0);
      if (x.dtype === "float16") return [inFloat32(node)];
      return [add(mul(standardize(x, x.rank - 1, node.attrs.eps as number), I(node, 1)), I(node, 2))];
    },
    fusable: normKernels({ cpu: ["float32", "float64"], cuda: ["float32"], webgpu: ["float32"] }),
    emit: (e, node) => {
      const x = I(node, 0);
      e.node(
        "LayerNormalization",
        [centeredForWebgpu(e, e.name(x), x.rank - 1), e.name(I(node, 1)), e.name(I(node, 2))],
        [e.name(node.outputs[0] as Tensor)],
        {
          axis: -1,
          epsilon: { f: node.attrs.eps as number },
          stash_type: 1,
        },
      );
    },
  },

  GroupNorm: {
    infer: (inputs, attrs) => {
      const x = inputs[0] as Tensor;
      const groups = attrs.groups as number;
      if (x.rank < 3) throw opError("groupNorm", inputs, "x must be [N, C, ...]");
      const C = x.shape[1] as number;
      if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) {
        throw opError("groupNorm", inputs, `${C} channels cannot be split into ${groups} groups`);
      }
      checkAffine("groupNorm", inputs, C);
      return [{ dtype: x.dtype, shape: x.shape }];
    },
    decompose: (node) => {
      const x = I(node, 0);
      if (x.dtype === "float16") return [inFloat32(node)];
      const [N, C] = x.shape as [number, number];
      const groups = node.attrs.groups as number;
      const y = reshape(standardize(reshape(x, [N, groups, -1]), 2, node.attrs.eps as number), x.shape);
      const perChannel = [C, ...x.shape.slice(2).map(() => 1)];
      return [add(mul(y, reshape(I(node, 1), perChannel)), reshape(I(node, 2), perChannel))];
    },
    // float16 on CUDA (halfOnCuda): the affine part then runs in float16, one rounding more than the
    // float32 form's.
    fusable: normKernels({ cpu: ["float32"], cuda: ["float32"], webgpu: ["float32"] }),
    // InstanceNormalization over [N, groups, rest] is group norm without the affine part (one kernel,
    // and unlike GroupNormalization its meaning did not change between opsets).
    emit: (e, node) => {
      const x = I(node, 0);
      const [N, C] = x.shape as [number, number];
      const groups = node.attrs.groups as number;
      const grouped = e.fresh("gn_grouped");
      const normed = e.fresh("gn_normed");
      const back = e.fresh("gn_back");
      const scaled = e.fresh("gn_scaled");
      const perChannel = [C, ...x.shape.slice(2).map(() => 1)];
      const gamma = e.fresh("gn_gamma");
      const beta = e.fresh("gn_beta");
      e.node("Reshape", [e.name(x), e.ints([N, groups, numel(x.shape) / N / groups])], [grouped]);
      const centered = centeredForWebgpu(e, grouped, 2);
      const [input, epsilon] = webgpuEpsilon(e, centered, x.dtype, node.attrs.eps as number);
      e.node(
        "InstanceNormalization",
        [input, e.fill(x.dtype, [groups], 1), e.fill(x.dtype, [groups], 0)],
        [normed],
        { epsilon: { f: epsilon } },
      );
      e.node("Reshape", [normed, e.ints(x.shape)], [back]);
      e.node("Reshape", [e.name(I(node, 1)), e.ints(perChannel)], [gamma]);
      e.node("Reshape", [e.name(I(node, 2)), e.ints(perChannel)], [beta]);
      e.node("Mul", [back, gamma], [scaled]);
      e.node("Add", [scaled, beta], [e.name(node.outputs[0] as Tensor)]);
    },
  },

  Attention: {
    infer: (inputs, attrs) => {
      const [q, k, v, mask] = inputs as [Tensor, Tensor, Tensor, Tensor | undefined];
      checkAttention("attention", q, k, v, mask, attrs.heads as number);
      return [{ dtype: q.dtype, shape: [q.shape[0] as number, q.shape[1] as number, v.shape[2] as number] }];
    },
    decompose: (node) => {
      const [q, k, v, mask] = node.inputs as [Tensor, Tensor, Tensor, Tensor | undefined];
      const heads = node.attrs.heads as number;
      return [attendValues(attentionProbs(q, k, { heads, scale: node.attrs.scale as number, mask }), v)];
    },
    // Differentiated by its own rule, not through the decomposition: the forward stays the fused kernel
    // where the device has one, and the backward recomputes the maps in query chunks (attentionGrad).
    vjp: (node, [g], needs) => attentionGrad(node, g as Tensor, needs),
    fusable: (node, device) => {
      const dt = I(node, 0).dtype;
      const mask = node.inputs[3];
      // MultiHeadAttention's attention_bias is [B or 1, heads or 1, L, S], and its CPU kernel is float32 only.
      const maskOk = !mask || mask.rank === 4;
      // On the CPU a differentiated attention keeps the decomposed forward: the fused kernel's float32
      // rounding moved sd2's gradients from 1.7e-3 to 2.5e-3 off the golden (parity suite).
      if (device === "cpu") return maskOk && dt === "float32" && !node.differentiated;
      if (device === "webgpu" && !webgpuAttentionFits(node)) return false;
      return maskOk && (dt === "float32" || dt === "float16");
    },
    emit: (e, node) => {
      const [q, k, v, mask] = node.inputs as [Tensor, Tensor, Tensor, Tensor | undefined];
      const ins = [e.name(q), e.name(k), e.name(v)];
      if (mask) ins.push("", "", e.name(mask));
      e.node(
        "MultiHeadAttention",
        ins,
        [e.name(node.outputs[0] as Tensor)],
        {
          num_heads: node.attrs.heads as number,
          scale: { f: node.attrs.scale as number },
        },
        "com.microsoft",
      );
    },
  },
};

/**
 * Whether WebGPU's fused attention can hold its key and value tiles in a workgroup's storage: onnxruntime's
 * WebGPU attention keeps 16 keys and values of a head in workgroup memory (2 · 16 · head dim · element
 * size), and 1.29 builds that shader whatever the device allows. The SD VAE's one 512-wide head in float32
 * asked for 65 536 bytes where an H100 allows 49 152: the pipeline failed and the photo was not encoded
 * (the error surfaced at the next node, a group norm; docs/PERFORMANCE.md, "WebGPU on onnxruntime 1.29").
 * Fused only within the 16 KiB every WebGPU device offers; wider heads run as the decomposition, whose maps
 * are small where heads are wide (the VAE's 4096 tokens, the UNet's 1280-channel level).
 */
function webgpuAttentionFits(node: Node): boolean {
  const q = I(node, 0);
  const v = I(node, 2);
  const heads = node.attrs.heads as number;
  const widest = Math.max(q.shape[2] as number, v.shape[2] as number) / heads;
  const bytes = q.dtype === "float16" ? 2 : 4;
  return 2 * 16 * widest * bytes <= WEBGPU_MIN_WORKGROUP_STORAGE;
}

/** maxComputeWorkgroupStorageSize that the WebGPU specification guarantees on every device. */
const WEBGPU_MIN_WORKGROUP_STORAGE = 16384;

/** Checks attention's operands (v is left out by attentionProbs) and names what is wrong. */
function checkAttention(
  op: string,
  q: Tensor,
  k: Tensor,
  v: Tensor | null,
  mask: Tensor | null | undefined,
  heads: number,
): void {
  const inputs = [q, k, ...(v ? [v] : []), ...(mask ? [mask] : [])];
  if (inputs.some((t) => t.rank !== 3 && t !== mask))
    throw opError(op, inputs, "q, k, v must be [B, L, heads*dim]");
  if (inputs.some((t) => t.dtype !== q.dtype))
    throw opError(op, inputs, "q, k, v (and mask) must share a dtype");
  const [B, L, D] = q.shape as [number, number, number];
  const S = k.shape[1] as number;
  if (k.shape[0] !== B || k.shape[2] !== D || (v && (v.shape[0] !== B || v.shape[1] !== S))) {
    throw opError(op, inputs, "k must be [B, S, D] like q's [B, L, D], v [B, S, Dv]");
  }
  if (
    !Number.isInteger(heads) ||
    heads < 1 ||
    D % heads !== 0 ||
    (v && (v.shape[2] as number) % heads !== 0)
  ) {
    throw opError(
      op,
      inputs,
      `${heads} heads must divide q's ${D}${v ? ` and v's ${v.shape[2]}` : ""} channels`,
    );
  }
  if (mask) {
    const s = broadcastShapes([mask.shape, [B, heads, L, S]]);
    if (mask.rank !== 4 || !s || !sameShape(s, [B, heads, L, S])) {
      throw opError(
        op,
        inputs,
        `mask ${fmt(mask.shape)} must broadcast to [B, heads, L, S] = ${fmt([B, heads, L, S])}`,
      );
    }
  }
}

/** [B, len, heads·d] → [B, heads, len, d] (perm [0,2,1,3]) or [B, heads, d, len] (perm [0,2,3,1]). */
function splitHeads(t: Tensor, heads: number, perm: number[]): Tensor {
  const [B, len, D] = t.shape as [number, number, number];
  return transpose(reshape(t, [B, len, heads, D / heads]), perm);
}

/**
 * The attention map softmax(q·kᵀ·scale + mask) per head, [B, heads, L, S]: what attention control
 * (Photoswap's self- and cross-attention map swaps, a subject word's cross-attention mask) reads and
 * replaces. `attendValues(attentionProbs(q, k, o), v)` equals `attention(q, k, v, o)`, in primitives.
 */
export function attentionProbs(q: Tensor, k: Tensor, opts: AttentionOptions): Tensor {
  checkAttention("attentionProbs", q, k, null, opts.mask, opts.heads);
  const scale = opts.scale ?? 1 / Math.sqrt((q.shape[2] as number) / opts.heads);
  const scores = matmul(
    splitHeads(mul(q, scale), opts.heads, [0, 2, 1, 3]),
    splitHeads(k, opts.heads, [0, 2, 3, 1]),
  );
  return softmax(opts.mask ? add(scores, opts.mask) : scores, -1);
}

/** probs [B, heads, L, S] applied to v [B, S, heads·dv], heads merged back: [B, L, heads·dv]. */
export function attendValues(probs: Tensor, v: Tensor): Tensor {
  const [B, heads, L, S] = probs.shape as [number, number, number, number];
  if (
    probs.rank !== 4 ||
    v.rank !== 3 ||
    v.shape[0] !== B ||
    v.shape[1] !== S ||
    (v.shape[2] as number) % heads !== 0
  ) {
    throw opError("attendValues", [probs, v], "probs must be [B, heads, L, S] and v [B, S, heads*dv]");
  }
  const o = matmul(probs, splitHeads(v, heads, [0, 2, 1, 3]));
  return reshape(transpose(o, [0, 2, 1, 3]), [B, L, v.shape[2] as number]);
}

/** Bytes of one [B, heads, rows, S] float32 map chunk that attention's backward materializes at a time. */
export const ATTENTION_GRAD_CHUNK_BYTES = 256 * 2 ** 20;

/**
 * Attention's VJP without the saved maps, as FlashAttention's backward does it but in graph ops: for
 * each chunk of query rows, the map P = softmax(q·kᵀ·s + mask) is recomputed from q and k, and
 *   dV += Pᵀ·ḡ,  dS = (ḡ·vᵀ) ⊙ P − P ⊙ Σ_j (ḡ·vᵀ) ⊙ P,  dQ_rows = dS·k·s,  dK += dSᵀ·q_rows·s,  dMask ← dS.
 * The unfused form kept every [B, heads, L, S] map alive from the forward to the backward (2 GB per
 * self-attention layer for four 512² images in fp32); here at most a chunk's maps exist at once.
 *
 * Where the maps fit the budget in one chunk (most layers), the gradients come straight from that chunk.
 * Otherwise the chunks' results go into one running sum (dQ, dK, dV and dMask side by side, each chunk
 * contributing its part, dQ padded into place), so every chunk is a consumer of the one before:
 * onnxruntime's default order walks the graph depth-first back from the outputs and so finishes a
 * chunk — and frees its maps — before the next one starts. Separate sums (or a concat of dQ rows) would
 * let the maps of every chunk wait for their last consumer. The sum is laid out as rows of a common
 * width (`stackRows`), not as one flat vector: onnxruntime's CUDA Concat of inputs of unequal lengths
 * builds and uploads an int64 table with one entry per index of the concatenated axis on every run: as
 * flat vectors, 12M entries per SD 1.5 loss step at 512² (docs/PERFORMANCE.md, "Where the training
 * step's time goes").
 *
 * fp16 attention recomputes the softmax and its VJP in float32, as the decomposition's ops do.
 */
function attentionGrad(node: Node, g: Tensor, needs: readonly boolean[]): (Tensor | null)[] {
  const [q, k, v, mask] = node.inputs as [Tensor, Tensor, Tensor, Tensor | undefined];
  const heads = node.attrs.heads as number;
  const scale = node.attrs.scale as number;
  const [B, L, D] = q.shape as [number, number, number];
  const S = k.shape[1] as number;
  const Dv = v.shape[2] as number;
  const dtype = q.dtype;
  const wide = dtype === "float16" ? "float32" : dtype;
  const [wantQ, wantK, wantV, wantMask] = [needs[0], needs[1], needs[2], needs[3] === true && !!mask];
  const wantS = wantQ || wantK || wantMask;

  const qh = splitHeads(mul(q, scale), heads, [0, 2, 1, 3]); // [B, h, L, d], scaled as in the forward
  const kT = splitHeads(k, heads, [0, 2, 3, 1]); // [B, h, d, S]
  const kh = splitHeads(k, heads, [0, 2, 1, 3]); // [B, h, S, d]
  const vT = splitHeads(v, heads, [0, 2, 3, 1]); // [B, h, dv, S]
  const gh = splitHeads(g, heads, [0, 2, 1, 3]); // [B, h, L, dv]
  const perRow = B * heads * S * 4;
  const budget = (node.attrs.gradChunkBytes as number | undefined) ?? ATTENTION_GRAD_CHUNK_BYTES;
  const rows = Math.max(1, Math.min(L, Math.floor(budget / perRow)));
  const maskRows = mask ? (mask.shape[2] as number) : 0;

  // One chunk's gradients, [B, h, ·, ·] per head (dQ: the chunk's rows only; dMask: the chunk's rows
  // unless the mask has one row for all).
  const chunk = (r0: number, r1: number): Grads => {
    const qc = slice(qh, [r0], [r1], [2]);
    const gc = slice(gh, [r0], [r1], [2]);
    let scores = cast(matmul(qc, kT), wide); // [B, h, C, S]
    if (mask) scores = add(scores, cast(maskRows === 1 ? mask : slice(mask, [r0], [r1], [2]), wide));
    const p = softmax(scores, -1);
    const out: Grads = {};
    if (wantS) {
      // Each product in the form autodiff gives the decomposition (softmax's VJP as its primitive writes
      // it, dK as (q·s)ᵀ·dS): with one chunk the gradients are bit for bit the decomposition's.
      const gp = mul(cast(matmul(gc, vT), wide), p);
      const ds = sub(gp, mul(p, reduceSum(gp, [3], true)));
      const dsc = cast(ds, dtype);
      if (wantQ) out.dQ = matmul(dsc, kh);
      if (wantK) out.dK = transpose(matmul(transpose(qc, [0, 1, 3, 2]), dsc), [0, 1, 3, 2]);
      if (wantMask) {
        const m = mask as Tensor;
        const chunkShape =
          maskRows === 1 ? m.shape : [m.shape[0] as number, m.shape[1] as number, r1 - r0, S];
        out.dMask = cast(sumToShape(ds, chunkShape), dtype);
      }
    }
    if (wantV) out.dV = matmul(transpose(cast(p, dtype), [0, 1, 3, 2]), gc);
    return out;
  };

  let grads: Grads;
  if (rows >= L) grads = chunk(0, L);
  else {
    const fullRows = (t: Tensor, r0: number, r1: number) => pad(t, [0, 0, r0, 0, 0, 0, L - r1, 0]);
    let sum: Tensor | undefined;
    let placed: Grads = {};
    for (let r0 = 0; r0 < L; r0 += rows) {
      const r1 = Math.min(L, r0 + rows);
      const c = chunk(r0, r1);
      placed = {
        ...c,
        ...(c.dQ ? { dQ: fullRows(c.dQ, r0, r1) } : {}),
        ...(c.dMask && maskRows !== 1 ? { dMask: fullRows(c.dMask, r0, r1) } : {}),
      };
      const part = stackRows(GRADS.flatMap((key) => placed[key] ?? []));
      sum = sum ? add(sum, part) : part;
    }
    const present = GRADS.filter((key) => placed[key]);
    const back = unstackRows(
      sum as Tensor,
      present.map((key) => (placed[key] as Tensor).shape),
    );
    grads = Object.fromEntries(present.map((key, i) => [key, back[i]]));
  }

  const merge = (t: Tensor | undefined, len: number, width: number) =>
    t ? reshape(transpose(t, [0, 2, 1, 3]), [B, len, width]) : null;
  const dQ = merge(grads.dQ, L, D);
  return [
    dQ && mul(dQ, scale),
    merge(grads.dK, S, D),
    merge(grads.dV, S, Dv),
    grads.dMask ? reshape(grads.dMask, (mask as Tensor).shape) : null,
  ];
}

/** Attention's input gradients per head, in the order a chunked backward stacks them. */
const GRADS = ["dQ", "dK", "dMask", "dV"] as const;
type Grads = Partial<Record<(typeof GRADS)[number], Tensor>>;

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/**
 * Tensors concatenated as rows of a common width (the gcd of their sizes): [Σ nᵢ/w, w]. Along that
 * axis onnxruntime's CUDA Concat (inputs of unequal lengths) builds and uploads one int64 per row, so
 * rows keep that table small where one flat vector would make it one entry per element.
 */
function stackRows(parts: readonly Tensor[]): Tensor {
  const width = parts.map((t) => numel(t.shape)).reduce(gcd);
  return concat(
    parts.map((t) => reshape(t, [-1, width])),
    0,
  );
}

/** stackRows undone: the parts of `shapes` back out of [rows, width]. */
function unstackRows(stacked: Tensor, shapes: readonly (readonly number[])[]): Tensor[] {
  const width = stacked.shape[1] as number;
  let at = 0;
  return shapes.map((shape) => {
    const n = numel(shape) / width;
    at += n;
    return reshape(slice(stacked, [at - n], [at], [0]), shape);
  });
}

function composite(op: string, inputs: readonly Tensor[], attrs: Attrs): Tensor {
  return (inputs[0] as Tensor).graph.apply(op, COMPOSITES[op] as OpDef, inputs, attrs)[0] as Tensor;
}

/**
 * A float16 norm node as the fp16 policy computes it where its fused float16 kernel is not used (other
 * devices, gradients): the same norm in float32 between Casts (float16 parameters widen exactly).
 */
function inFloat32(node: Node): Tensor {
  const wide = node.inputs.map((t) => cast(t, "float32"));
  return cast(composite(node.op, wide, node.attrs), "float16");
}

/** Layer norm over the last axis (torch.nn.LayerNorm(D)): gamma, beta are [D]. */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  return composite("LayerNorm", [x, gamma, beta], { eps });
}

/** torch.nn.GroupNorm over x[N, C, ...]: gamma, beta are [C]. */
export function groupNorm(x: Tensor, groups: number, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  return composite("GroupNorm", [x, gamma, beta], { groups, eps });
}

export interface AttentionOptions {
  heads: number;
  /** Defaults to 1/sqrt(head dim). */
  scale?: number;
  /** Additive mask (0 where allowed, a large negative where not), [B or 1, heads or 1, L, S]. */
  mask?: Tensor | null;
  /** attention(): the backward's working set per query chunk (default ATTENTION_GRAD_CHUNK_BYTES). */
  gradChunkBytes?: number;
}

/** Multi-head scaled dot-product attention over q[B, L, heads*d], k[B, S, heads*d], v[B, S, heads*dv]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const scale = opts.scale ?? 1 / Math.sqrt((q.shape[2] as number) / opts.heads);
  const inputs = opts.mask ? [q, k, v, opts.mask] : [q, k, v];
  return composite("Attention", inputs, {
    heads: opts.heads,
    scale,
    ...(opts.gradChunkBytes ? { gradChunkBytes: opts.gradChunkBytes } : {}),
  });
}

/** CLIP's causal mask as an additive [1, 1, L, L] constant: 0 on and below the diagonal, -1e9 above. */
export function causalMask(like: Tensor, length: number, dtype: DType = like.dtype): Tensor {
  const m = new Array<number>(length * length).fill(0);
  for (let i = 0; i < length; i++)
    for (let j = i + 1; j < length; j++) m[i * length + j] = dtype === "float16" ? -65504 : -1e9;
  return like.graph.constant(m, dtype, [1, 1, length, length]);
}
