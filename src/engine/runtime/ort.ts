/** The one place that imports onnxruntime-node (kept external by the esbuild bundle). */
import ort from "onnxruntime-node";

export { ort };
export type OrtSession = ort.InferenceSession;
export type OrtTensor = ort.Tensor;
