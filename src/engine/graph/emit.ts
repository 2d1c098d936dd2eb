/**
 * Graph → ONNX ModelProto (opset 17 + com.microsoft 1). Walks back from the outputs, so nodes, inputs
 * and weights that no output needs are left out. Weights are not read here: `serializeInline` or
 * `serializeExternal` reads each one once, inline or into an external-data file (protobuf cannot hold
 * more than 2 GB).
 */

import { createHash } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";
import { BYTES_PER_ELEMENT, bytesOf, type DType, fromNumbers, numel, ONNX_DTYPE } from "./dtype.js";
import { type Graph, GraphError, type Node, type Tensor } from "./graph.js";
import {
  ATTR,
  type AttributeJson,
  encodeModel,
  type ModelJson,
  type NodeJson,
  type TensorJson,
  type ValueInfoJson,
} from "./onnx-schema.js";
import type { Device, Emitter, OnnxAttr } from "./op.js";
import { postOrder } from "./post-order.js";
import { emittedAs, type Fuse, opDef } from "./registry.js";

export const OPSET = 17;

export interface EmitOptions {
  /** The device the model is for: it decides which fused kernels may be used (default cpu). */
  device?: Device;
  /** Use fused kernels for composites where possible (default true; false emits every composite as primitives;
   *  a predicate decides per composite op, e.g. all but "Attention"). */
  fuse?: Fuse;
  /** Emit k×k convolutions as an index gather (im2col) + MatMul (default: on webgpu, whose MatMul
   *  kernels run them about twice as fast as its direct Conv; docs/PERFORMANCE.md). */
  convAsMatMul?: boolean;
  /** Concatenate the float outputs of each dtype into one flat output (see PackedOutput). */
  packOutputs?: boolean;
  /** Outputs left out of the packing, each its own ONNX output (carried state the runtime keeps on the device). */
  unpacked?: (name: string) => boolean;
}

/**
 * Several outputs of one dtype delivered as one tensor, `parts` at their (element) offsets: a GPU provider
 * reads each output back with its own wait for the device, so a LoRA step's 256 gradients cost 256 round
 * trips unpacked (~1 ms each on WebGPU) and one packed. The tensor is [rows, PACK_ROW], each output
 * zero-padded to whole rows: onnxruntime's CUDA Concat of inputs of unequal lengths builds and uploads
 * an int64 table with one entry per index of the concatenated axis on every run, and as one flat vector
 * the tree of Concats packing a LoRA step's gradients made 14.5M such entries per step (SD 1.5, 512²;
 * docs/PERFORMANCE.md, "Where the training step's time goes").
 */
export interface PackedOutput {
  name: string;
  dtype: DType;
  parts: { name: string; offset: number; size: number }[];
}

/** Elements per row of a packed output. */
export const PACK_ROW = 256;

export interface ValueSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface Initializer {
  name: string;
  dtype: DType;
  shape: readonly number[];
  byteLength: number;
  bytes: () => Uint8Array;
}

export interface EmittedModel {
  model: ModelJson;
  initializers: Initializer[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  /** Outputs that the ONNX model delivers packed (their names are not among its outputs). */
  packed: PackedOutput[];
  /** sha256 of everything but the weights' bytes (which the caller's cache key stands for). */
  structureHash: string;
}

function valueInfo(v: ValueSpec): ValueInfoJson {
  return {
    name: v.name,
    type: {
      tensorType: { elemType: ONNX_DTYPE[v.dtype], shape: { dim: v.shape.map((d) => ({ dimValue: d })) } },
    },
  };
}

function attribute(name: string, v: OnnxAttr): AttributeJson {
  if (typeof v === "number") return { name, type: ATTR.INT, i: v };
  if (typeof v === "string") return { name, type: ATTR.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: ATTR.INTS, ints: [...v] };
  if ("f" in v) return { name, type: ATTR.FLOAT, f: v.f };
  return { name, type: ATTR.FLOATS, floats: [...(v as { floats: number[] }).floats] };
}

/** The weight of a 2-D weight's transpose (a `linear` layer's wᵀ), which emission writes as a weight of its
 *  own with the bytes transposed: onnxruntime does not fold such Transposes on the WebGPU provider, and
 *  they ran as ≈ 200 kernels per UNet step. */
function transposedWeight(t: Tensor): (Tensor & { source: { kind: "weight" } }) | null {
  const w = t.node?.op === "Transpose" ? t.node.inputs[0] : undefined;
  return w?.source?.kind === "weight" && w.rank === 2 ? (w as Tensor & { source: { kind: "weight" } }) : null;
}

/** [rows, cols] row-major → [cols, rows], elements of `size` bytes. */
function transposeBytes(b: Uint8Array, rows: number, cols: number, size: number): Uint8Array {
  const out = new Uint8Array(b.byteLength);
  const src = b.byteOffset % size === 0 ? b : b.slice();
  const view = (u: Uint8Array) =>
    size === 1
      ? u
      : size === 2
        ? new Uint16Array(u.buffer, u.byteOffset, u.byteLength / 2)
        : size === 4
          ? new Uint32Array(u.buffer, u.byteOffset, u.byteLength / 4)
          : new BigUint64Array(u.buffer, u.byteOffset, u.byteLength / 8);
  const [from, to] = [view(src), view(out)];
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) to[j * rows + i] = from[i * cols + j] as never;
  return out;
}

/** Nodes needed by the outputs, inputs before users (iterative post-order, so deep graphs are fine). */
function reachable(
  roots: readonly Tensor[],
  device: Device,
  fuse: Fuse,
): { nodes: Node[]; leaves: Set<Tensor> } {
  const leaves = new Set<Tensor>();
  // The nodes that compute `ts`; the tensors that come from no node (inputs, weights) are leaves.
  const producers = (ts: readonly Tensor[]): Node[] =>
    ts.flatMap((t) => {
      const r = emittedAs(t, device, fuse);
      if (r.node && !transposedWeight(r)) return [r.node];
      leaves.add(r);
      return [];
    });
  const nodes = postOrder(producers(roots), (n) => producers(n.inputs));
  return { nodes, leaves };
}

export function emitGraph(graph: Graph, opts: EmitOptions = {}): EmittedModel {
  const device = opts.device ?? "cpu";
  const fuse = opts.fuse ?? true;
  if (graph.outputs.length === 0) throw new GraphError(`graph "${graph.name}" has no outputs`);
  const { nodes, leaves } = reachable(
    graph.outputs.map((o) => o.tensor),
    device,
    fuse,
  );

  const used = new Set<string>(graph.outputs.map((o) => o.name));
  for (const t of [...graph.inputs, ...graph.weights]) used.add((t.source as { name: string }).name);
  const fresh = (hint: string) => {
    let name = hint;
    for (let i = 1; used.has(name); i++) name = `${hint}_${i}`;
    used.add(name);
    return name;
  };
  const names = new Map<Tensor, string>();
  const name = (t: Tensor): string => {
    const r = emittedAs(t, device, fuse);
    let n = names.get(r);
    if (n === undefined) {
      n =
        r.source && r.source.kind !== "constant" ? r.source.name : fresh(r.source ? `c${r.id}` : `t${r.id}`);
      names.set(r, n);
    }
    return n;
  };

  const initializers: Initializer[] = [];
  const shared = new Map<string, string>();
  const addInit = (init: Omit<Initializer, "byteLength">) => {
    const expected = numel(init.shape) * BYTES_PER_ELEMENT[init.dtype];
    initializers.push({ ...init, byteLength: expected });
  };
  const constant = (
    key: string,
    dtype: DType,
    shape: readonly number[],
    data: () => Uint8Array,
    hint: string,
  ) => {
    let n = shared.get(key);
    if (!n) {
      n = fresh(hint);
      shared.set(key, n);
      const bytes = data();
      addInit({ name: n, dtype, shape, bytes: () => bytes });
    }
    return n;
  };

  const onnxNodes: NodeJson[] = [];
  const e: Emitter = {
    device,
    convAsMatMul: opts.convAsMatMul ?? device === "webgpu",
    name,
    fresh,
    node: (opType, inputs, outputs, attrs = {}, domain = "") => {
      onnxNodes.push({
        input: [...inputs],
        output: [...outputs],
        name: `${opType}_${onnxNodes.length}`,
        opType,
        domain,
        attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      });
    },
    int64s: (values, hint) =>
      constant(
        `i64:${values.join(",")}`,
        "int64",
        [values.length],
        () => bytesOf(fromNumbers("int64", values)),
        hint,
      ),
    ints: (values) =>
      constant(
        `i64:${values.join(",")}`,
        "int64",
        [values.length],
        () => bytesOf(fromNumbers("int64", values)),
        "shape",
      ),
    fill: (dtype, shape, value) =>
      constant(
        `${dtype}:${shape.join(",")}:${value}`,
        dtype,
        shape,
        () => bytesOf(fromNumbers(dtype, new Array<number>(numel(shape)).fill(value))),
        "fill",
      ),
  };

  for (const t of leaves) {
    const w = transposedWeight(t);
    if (w) {
      const [rows, cols] = w.shape as [number, number];
      const data = w.source.data;
      names.set(t, fresh(`${w.source.name}.T`));
      addInit({
        name: name(t),
        dtype: t.dtype,
        shape: t.shape,
        bytes: () => transposeBytes(data.bytes(), rows, cols, BYTES_PER_ELEMENT[t.dtype]),
      });
      continue;
    }
    const src = t.source;
    if (!src || src.kind === "input") continue;
    if (src.kind === "weight") {
      const data = src.data;
      addInit({
        name: name(t),
        dtype: t.dtype,
        shape: t.shape,
        bytes: () => {
          const b = data.bytes();
          if (b.byteLength !== numel(t.shape) * BYTES_PER_ELEMENT[t.dtype]) {
            throw new GraphError(`weight "${src.name}": ${b.byteLength} bytes do not hold ${t}`);
          }
          return b;
        },
      });
    } else {
      const bytes = bytesOf(src.data);
      addInit({ name: name(t), dtype: t.dtype, shape: t.shape, bytes: () => bytes });
    }
  }
  for (const n of nodes) opDef(n.op).emit?.(e, n);

  const inputs = graph.inputs
    .filter((t) => leaves.has(t))
    .map((t) => ({ name: name(t), dtype: t.dtype, shape: [...t.shape] }));
  const outputs = graph.outputs.map((o) => ({
    name: o.name,
    dtype: o.tensor.dtype,
    shape: [...o.tensor.shape],
  }));
  const packed: PackedOutput[] = [];
  const onnxOutputs: ValueSpec[] = [];
  const single = (o: (typeof graph.outputs)[number]) => {
    e.node("Identity", [name(o.tensor)], [o.name]);
    onnxOutputs.push({ name: o.name, dtype: o.tensor.dtype, shape: [...o.tensor.shape] });
  };
  for (const o of graph.outputs.filter((o) => opts.unpacked?.(o.name))) single(o);
  for (const dtype of new Set(outputs.map((o) => o.dtype))) {
    const group = graph.outputs.filter((o) => o.tensor.dtype === dtype && !opts.unpacked?.(o.name));
    if (group.length === 0) continue;
    if (!opts.packOutputs || group.length < 2 || (dtype !== "float32" && dtype !== "float16")) {
      for (const o of group) single(o);
      continue;
    }
    const p: PackedOutput = { name: fresh(`packed_${dtype}`), dtype, parts: [] };
    let rows = 0;
    let level = group.map((o) => {
      const size = numel(o.tensor.shape);
      const n = Math.ceil(size / PACK_ROW);
      p.parts.push({ name: o.name, offset: rows * PACK_ROW, size });
      rows += n;
      const flat = fresh(`${o.name}_flat`);
      const packedRows = fresh(`${o.name}_rows`);
      e.node("Reshape", [name(o.tensor), e.ints([size])], [flat]);
      if (size === n * PACK_ROW) e.node("Reshape", [flat, e.ints([n, PACK_ROW])], [packedRows]);
      else {
        const padded = fresh(`${o.name}_padded`);
        e.node("Pad", [flat, e.ints([0, n * PACK_ROW - size])], [padded]);
        e.node("Reshape", [padded, e.ints([n, PACK_ROW])], [packedRows]);
      }
      return packedRows;
    });
    // A tree of concatenations of at most 4 (a WebGPU shader binds few storage buffers by default).
    while (level.length > 1) {
      const next: string[] = [];
      for (let i = 0; i < level.length; i += 4) {
        const out = level.length <= 4 ? p.name : fresh("packed_part");
        e.node("Concat", level.slice(i, i + 4), [out], { axis: 0 });
        next.push(out);
      }
      level = next;
    }
    packed.push(p);
    onnxOutputs.push({ name: p.name, dtype, shape: [rows, PACK_ROW] });
  }

  const model: ModelJson = {
    irVersion: 8,
    producerName: "photo-edit-bot",
    producerVersion: "1",
    opsetImport: [
      { domain: "", version: OPSET },
      { domain: "com.microsoft", version: 1 },
    ],
    graph: {
      name: graph.name,
      node: onnxNodes,
      initializer: [],
      input: inputs.map(valueInfo),
      output: onnxOutputs.map(valueInfo),
    },
  };

  const h = createHash("sha256");
  h.update(JSON.stringify({ model, init: initializers.map((i) => [i.name, i.dtype, i.shape]) }));
  for (const t of leaves) if (t.source?.kind === "constant") h.update(bytesOf(t.source.data));
  return { model, initializers, inputs, outputs, packed, structureHash: h.digest("hex") };
}

function tensorProto(init: Initializer): TensorJson {
  return { name: init.name, dims: [...init.shape], dataType: ONNX_DTYPE[init.dtype] };
}

/** The model with every weight inline (fine below protobuf's 2 GB limit). */
export function serializeInline(m: EmittedModel): Uint8Array {
  const total = m.initializers.reduce((s, i) => s + i.byteLength, 0);
  if (total > 1.8 * 2 ** 30) {
    throw new GraphError(
      `graph "${m.model.graph.name}": ${(total / 2 ** 30).toFixed(2)} GB of weights need external data`,
    );
  }
  const initializer = m.initializers.map((i) => ({ ...tensorProto(i), rawData: i.bytes() }));
  return encodeModel({ ...m.model, graph: { ...m.model.graph, initializer } });
}

/** Writes the weights of at least `minBytes` to `dataPath` (page-aligned, each read once) and returns the
 *  model that refers to them by `dataFile` (a path relative to the model file). */
export function serializeExternal(
  m: EmittedModel,
  dataPath: string,
  dataFile: string,
  minBytes = 1024,
): Uint8Array {
  const fd = openSync(dataPath, "w");
  let offset = 0;
  try {
    const initializer = m.initializers.map((i): TensorJson => {
      const bytes = i.bytes();
      if (i.byteLength < minBytes) return { ...tensorProto(i), rawData: bytes };
      const at = Math.ceil(offset / 4096) * 4096;
      writeSync(fd, bytes, 0, bytes.byteLength, at);
      offset = at + bytes.byteLength;
      return {
        ...tensorProto(i),
        dataLocation: 1,
        externalData: [
          { key: "location", value: dataFile },
          { key: "offset", value: String(at) },
          { key: "length", value: String(bytes.byteLength) },
        ],
      };
    });
    return encodeModel({ ...m.model, graph: { ...m.model.graph, initializer } });
  } finally {
    closeSync(fd);
  }
}
