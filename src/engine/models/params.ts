/**
 * Where a network builder gets its parameters from. The builders in this folder never touch weight files:
 * they ask a ParamSource for a parameter by its checkpoint name and the shape the config implies, and get
 * back a graph tensor — an initializer for frozen weights, or a graph input for weights being
 * differentiated (full fine-tuning, the parity suite's `grad.d_unet.*`).
 */
import type { DType, Graph, Tensor } from "../graph/index.js";
import { cast } from "../graph/index.js";
import type { WeightStore } from "./weights.js";

export interface ParamSource {
  readonly graph: Graph;
  /** The compute dtype every parameter is delivered in (weights stored otherwise are cast in the graph). */
  readonly dtype: DType;
  /** Parameter `name` (relative to the component), checked to have `shape`. */
  get(name: string, shape: readonly number[]): Tensor;
}

/** What a ParamSource reads from: the loaders' WeightStore, or the benchmark's random weights. */
export type WeightSource = Pick<WeightStore, "has" | "data">;

export interface StoreParamsOptions {
  /** Prefix of the graph names (initializers and inputs), e.g. "unet." so components can share a graph. */
  prefix?: string;
  /** Compute dtype (default float32): float32 or float16. */
  dtype?: "float32" | "float16";
  /** Parameters delivered as float32 graph inputs named `prefix + name` instead of initializers. */
  trainable?: (name: string) => boolean;
  /** Names the source is known by in error messages (a file or folder). */
  origin?: string;
}

/** A ParamSource over a weight store, plus the graph inputs it made for the trainable parameters. */
export class StoreParams implements ParamSource {
  readonly dtype: "float32" | "float16";
  /** Trainable parameters, by checkpoint name, in the order they were first used. */
  readonly inputs = new Map<string, Tensor>();
  private readonly made = new Map<string, Tensor>();

  constructor(
    readonly graph: Graph,
    private readonly store: WeightSource,
    private readonly opts: StoreParamsOptions = {},
  ) {
    this.dtype = opts.dtype ?? "float32";
  }

  get(name: string, shape: readonly number[]): Tensor {
    const cached = this.made.get(name);
    if (cached) return cached;
    if (!this.store.has(name)) {
      throw new Error(`${this.opts.origin ?? "the checkpoint"}: parameter "${name}" is missing`);
    }
    const graphName = (this.opts.prefix ?? "") + name;
    let t: Tensor;
    if (this.opts.trainable?.(name)) {
      // Checks shape and dtype the same way an initializer would, without reading the bytes.
      this.store.data(name, { shape, dtype: "float32" });
      t = this.graph.input(graphName, "float32", shape);
      this.inputs.set(name, t);
      t = cast(t, this.dtype);
    } else {
      t = this.graph.weight(graphName, this.store.data(name, { shape, dtype: this.dtype }));
    }
    this.made.set(name, t);
    return t;
  }
}
