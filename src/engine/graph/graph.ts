/**
 * The graph IR: tensors (values with a static dtype and shape) produced by nodes (one op of the table in
 * primitives.ts / composites.ts applied to input tensors), graph inputs, weights and constants.
 * Building is append-only; emission (emit.ts) walks back from the outputs, so whatever does not feed an
 * output costs nothing.
 */
import { DTYPES, type DType, fromNumbers, numel, type TypedArray } from "./dtype.js";

/** A weight's bytes, read only when the graph is emitted (little-endian raw, row-major). */
export type WeightData = { dtype: DType; shape: readonly number[]; bytes: () => Uint8Array };

export class GraphError extends Error {
  override name = "GraphError";
}

export type Attrs = Record<string, unknown>;

export type Source =
  | { kind: "input"; name: string }
  | { kind: "weight"; name: string; data: WeightData }
  | { kind: "constant"; data: TypedArray };

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly dtype: DType,
    readonly shape: readonly number[],
    /** The node that computes it, or null for inputs, weights and constants. */
    readonly node: Node | null,
    /** Which output of `node` it is. */
    readonly index: number,
    readonly source: Source | null,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  toString(): string {
    const what = this.source && this.source.kind !== "constant" ? ` "${this.source.name}"` : "";
    return `${this.dtype}[${this.shape.join(",")}]${what}`;
  }
}

export class Node {
  /** For composite ops: the same computation in primitives, built on first need (autodiff or emission). */
  expansion: Tensor[] | null = null;
  /** Set by grad() on composites on a gradient path: emitted as their expansion, whose nodes the
   *  backward pass reuses, unless the op has a VJP of its own (then its fused form may stay). */
  differentiated = false;
  outputs: Tensor[] = [];

  constructor(
    readonly id: number,
    readonly op: string,
    readonly inputs: readonly Tensor[],
    readonly attrs: Attrs,
  ) {}
}

export type OutputSpec = { dtype: DType; shape: readonly number[] };

/** What the graph needs to know of an op to apply it (the full definitions live in the op tables). */
export interface OpSignature {
  infer(inputs: readonly Tensor[], attrs: Attrs): OutputSpec[];
}

export class Graph {
  readonly inputs: Tensor[] = [];
  readonly weights: Tensor[] = [];
  readonly outputs: { name: string; tensor: Tensor }[] = [];
  readonly nodes: Node[] = [];
  /** Set by grad(): the graph computes gradients (some fused forms are kept to graphs without). */
  hasGradients = false;
  private nextId = 0;
  private readonly names = new Set<string>();

  constructor(readonly name = "graph") {}

  input(name: string, dtype: DType, shape: readonly number[]): Tensor {
    this.claim(name, "input");
    checkShape(`input "${name}"`, dtype, shape);
    const t = new Tensor(this, this.nextId++, dtype, [...shape], null, 0, { kind: "input", name });
    this.inputs.push(t);
    return t;
  }

  weight(name: string, data: WeightData): Tensor {
    this.claim(name, "weight");
    checkShape(`weight "${name}"`, data.dtype, data.shape);
    const t = new Tensor(this, this.nextId++, data.dtype, [...data.shape], null, 0, {
      kind: "weight",
      name,
      data,
    });
    this.weights.push(t);
    return t;
  }

  /** A constant: a scalar (shape [] unless given), a list (1-D unless shaped) or a host array. */
  constant(
    value: number | readonly number[] | TypedArray,
    dtype: DType = "float32",
    shape?: readonly number[],
  ): Tensor {
    let data: TypedArray;
    if (typeof value === "number") data = fromNumbers(dtype, [value]);
    else if (Array.isArray(value)) data = fromNumbers(dtype, value as readonly number[]);
    else data = value as TypedArray;
    const s = shape ?? (typeof value === "number" ? [] : [data.length]);
    checkShape("constant", dtype, s);
    if (numel(s) !== data.length) {
      throw new GraphError(`constant: ${data.length} values do not fill shape [${s.join(",")}]`);
    }
    return new Tensor(this, this.nextId++, dtype, [...s], null, 0, { kind: "constant", data });
  }

  output(name: string, t: Tensor): void {
    if (t.graph !== this) throw new GraphError(`output "${name}": the tensor belongs to another graph`);
    this.claim(name, "output");
    this.outputs.push({ name, tensor: t });
  }

  /** Applies an op: validates and infers through `sig`, records the node, returns its outputs. */
  apply(op: string, sig: OpSignature, inputs: readonly Tensor[], attrs: Attrs = {}): Tensor[] {
    for (const t of inputs) {
      if (t.graph !== this) throw new GraphError(`${op}: input ${t} belongs to another graph`);
    }
    const specs = sig.infer(inputs, attrs);
    const node = new Node(this.nextId++, op, inputs, attrs);
    node.outputs = specs.map((s, i) => new Tensor(this, this.nextId++, s.dtype, [...s.shape], node, i, null));
    this.nodes.push(node);
    return node.outputs;
  }

  private claim(name: string, what: string): void {
    if (!/^[A-Za-z0-9_.:/-]+$/.test(name)) {
      throw new GraphError(`${what} name "${name}": use letters, digits and _ . : / - only`);
    }
    if (this.names.has(name))
      throw new GraphError(`${what} name "${name}" is already used in graph "${this.name}"`);
    this.names.add(name);
  }
}

function checkShape(what: string, dtype: DType, shape: readonly number[]): void {
  if (!DTYPES.includes(dtype))
    throw new GraphError(`${what}: unsupported dtype "${dtype}" (one of ${DTYPES.join(", ")})`);
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new GraphError(`${what}: shape [${shape.join(",")}] must hold non-negative integers`);
  }
}
