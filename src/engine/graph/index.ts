/** The graph builder: typed ONNX graphs built in TypeScript, with reverse-mode autodiff (docs/ENGINE.md). */
export { grad } from "./autodiff.js";
export {
  type AttentionOptions,
  attendValues,
  attention,
  attentionProbs,
  causalMask,
  groupNorm,
  layerNorm,
} from "./composites.js";
export type { DType, TypedArray } from "./dtype.js";
export { bf16ToF32, f16ToF32, f32ToF16, numel } from "./dtype.js";
export {
  type EmitOptions,
  type EmittedModel,
  emitGraph,
  serializeExternal,
  serializeInline,
} from "./emit.js";
export { Graph, GraphError, Tensor, type WeightData } from "./graph.js";
export type { Device as TargetDevice } from "./op.js";
export * from "./ops.js";
