/** What every entry of the op tables provides: forward (shape/dtype inference + ONNX emission) and VJP. */
import type { DType } from "./dtype.js";
import type { Attrs, Node, OutputSpec, Tensor } from "./graph.js";

/** An ONNX attribute value: integers as numbers, floats wrapped ({ f }), int lists, float lists, strings. */
export type OnnxAttr = number | { f: number } | readonly number[] | { floats: readonly number[] } | string;

export type Device = "cpu" | "cuda" | "webgpu";

/** What an op's emit() writes through. */
export interface Emitter {
  readonly device: Device;
  /** Convolutions with a k×k kernel go out as im2col (one Gather) + MatMul rather than Conv. */
  readonly convAsMatMul: boolean;
  /** The ONNX value name of a graph tensor. */
  name(t: Tensor): string;
  /** A new, unused value name. */
  fresh(hint: string): string;
  node(
    opType: string,
    inputs: readonly string[],
    outputs: readonly string[],
    attrs?: Record<string, OnnxAttr>,
    domain?: string,
  ): void;
  /** An int64 1-D initializer (deduplicated), e.g. a Reshape target. */
  ints(values: readonly number[]): string;
  /** The same for long index lists (a Gather's indices), named after `hint`. */
  int64s(values: readonly number[], hint: string): string;
  /** A float initializer of `dtype` filled with `value`. */
  fill(dtype: DType, shape: readonly number[], value: number): string;
}

export interface OpDef {
  infer(inputs: readonly Tensor[], attrs: Attrs): OutputSpec[];
  /** Inputs through which gradients can flow (default: every input). */
  differentiable?: (index: number, node: Node) => boolean;
  /** Primitive ops: ONNX for the node. Composite ops: the fused ONNX form, used when `fusable`. */
  emit?(e: Emitter, node: Node): void;
  /** Input gradients given output gradients (null = zero), only where `needs[i]`: every primitive, and
   *  the composites whose backward is not their decomposition's (attention). */
  vjp?(node: Node, gy: readonly (Tensor | null)[], needs: readonly boolean[]): (Tensor | null)[];
  /** Composite ops: the same computation in primitives (differentiated, and emitted when not fusable). */
  decompose?(node: Node): Tensor[];
  /** Composite ops: whether the fused form can run on this device at these dtypes. */
  fusable?(node: Node, device: Device): boolean;
}
