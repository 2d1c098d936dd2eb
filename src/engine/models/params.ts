/**
 * Where a network builder gets its parameters from. The builders in this folder never touch weight files:
 * they ask a ParamSource for a parameter by its checkpoint name and the shape the config implies, and get
 * back a graph tensor — an initializer for frozen weights, or a graph input for weights being
 * differentiated (full fine-tuning, the parity suite's `grad.d_unet.*`).
 */
import type { DType, Graph, Tensor } from "../graph/index.js";
import { cast } from "../graph/index.js";
import type { TrainedSource } from "../optim/flat-params.js";
import { MissingParameterError } from "./errors.js";
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
  /** Compute dtype (default float32): float32 or float16. */
  dtype?: "float32" | "float16";
  /** Parameters delivered as float32 graph inputs (named as the parameter) instead of initializers. */
  trainable?: (name: string) => boolean;
  /** Where the trainable parameters come from instead (a training graph's flat input, optim/flat-params.ts). */
  trainedSource?: TrainedSource;
  /** Names the source is known by in error messages (a file or folder). */
  origin?: string;
  /** The older name diffusers still loads a parameter under, read when the store lacks `name`. */
  legacyName?: (name: string) => string | undefined;
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
    const stored = this.storedName(name);
    let t: Tensor;
    if (this.opts.trainable?.(name)) {
      // Checks shape and dtype the same way an initializer would, without reading the bytes.
      this.store.data(stored, { shape, dtype: "float32" });
      t = this.opts.trainedSource?.(name, shape) ?? this.graph.input(name, "float32", shape);
      this.inputs.set(name, t);
      t = cast(t, this.dtype);
    } else {
      t = this.graph.weight(name, this.store.data(stored, { shape, dtype: this.dtype }));
    }
    this.made.set(name, t);
    return t;
  }

  private storedName(name: string): string {
    if (this.store.has(name)) return name;
    const legacy = this.opts.legacyName?.(name);
    if (legacy !== undefined && this.store.has(legacy)) return legacy;
    throw new MissingParameterError(this.opts.origin ?? "the checkpoint", name);
  }
}
