/**
 * A component's weights as the graph builder consumes them: `graph.weight(name, store.data(name))`.
 * Bytes stay on disk until the graph asks for them (WeightData.bytes is called when the initializer is
 * written), and are not cached here, so a large UNet is streamed tensor by tensor.
 */
import { f32ToF16 } from "../graph/dtype.js";
import { ModelFileError } from "./errors.js";
import { bytesToFloat32, type TensorDType, type TensorFile } from "./tensor-file.js";

/** Mirrors the graph's DType (CONTRACTS.md §1) for the dtypes a checkpoint can hold. */
export type WeightDType = "float32" | "float16" | "float64" | "int64" | "int32" | "bool";
export type WeightData = { dtype: WeightDType; shape: readonly number[]; bytes: () => Uint8Array };

export interface WeightInfo {
  readonly name: string;
  readonly dtype: TensorDType;
  readonly shape: readonly number[];
  readonly file: string;
  readonly byteLength: number;
}

export interface WeightRequest {
  /** Refuse the tensor unless it has exactly this shape. */
  shape?: readonly number[];
  /** Convert a floating-point tensor to this dtype on read (fp16 ↔ fp32, bf16 → either). */
  dtype?: "float32" | "float16";
}

export interface WeightStore {
  names(): string[];
  has(name: string): boolean;
  info(name: string): WeightInfo;
  data(name: string, request?: WeightRequest): WeightData;
  /** Convenience for host-side use (tests, LoRA init): the tensor as float32, read now. */
  float32(name: string, shape?: readonly number[]): Float32Array;
}

const NATIVE: Partial<Record<TensorDType, WeightDType>> = {
  F32: "float32",
  F16: "float16",
  F64: "float64",
  I64: "int64",
  I32: "int32",
  BOOL: "bool",
};
const FLOATS: ReadonlySet<TensorDType> = new Set(["F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2"]);

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function weightStore(st: TensorFile): WeightStore {
  const info = (name: string): WeightInfo => {
    const e = st.tensors.get(name);
    if (!e)
      throw new ModelFileError(
        st.path,
        `has no tensor named "${name}" (it holds ${st.tensors.size} tensors)`,
      );
    return { name, dtype: e.dtype, shape: e.shape, file: e.file, byteLength: e.length };
  };
  const checked = (name: string, request: WeightRequest | undefined): WeightInfo => {
    const i = info(name);
    if (request?.shape && !sameShape(i.shape, request.shape)) {
      throw new ModelFileError(
        i.file,
        `tensor "${name}" has shape [${i.shape.join(", ")}], expected [${request.shape.join(", ")}] (config and weights disagree)`,
      );
    }
    if (request?.dtype && !FLOATS.has(i.dtype)) {
      throw new ModelFileError(
        i.file,
        `tensor "${name}" has dtype ${i.dtype}, expected a floating-point weight`,
      );
    }
    return i;
  };
  return {
    names: () => [...st.tensors.keys()],
    has: (name) => st.tensors.has(name),
    info,
    data(name, request) {
      const i = checked(name, request);
      const target: WeightDType | undefined =
        request?.dtype ?? NATIVE[i.dtype] ?? (FLOATS.has(i.dtype) ? "float32" : undefined);
      if (!target)
        throw new ModelFileError(
          i.file,
          `tensor "${name}" has dtype ${i.dtype}, which the engine cannot use`,
        );
      if (target === NATIVE[i.dtype]) return { dtype: target, shape: i.shape, bytes: () => st.read(name) };
      const toF32 = () => bytesToFloat32(st.read(name), i.dtype, i.file, name);
      return {
        dtype: target,
        shape: i.shape,
        bytes: () => {
          const f32 = toF32();
          const out = target === "float16" ? f32ToF16(f32) : f32;
          return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
        },
      };
    },
    float32(name, shape) {
      const i = checked(name, { shape, dtype: "float32" });
      return bytesToFloat32(st.read(name), i.dtype, i.file, name);
    },
  };
}

/**
 * The store seen with `prefix` removed from every name that has it. transformers < 5 saved CLIPTextModel
 * as `text_model.encoder…`, transformers 5 saves `encoder…`; the text encoder reads one naming.
 */
export function withoutPrefix(store: WeightStore, prefix: string): WeightStore {
  const full = (name: string) => (store.has(name) ? name : store.has(prefix + name) ? prefix + name : name);
  return {
    names: () => store.names().map((n) => (n.startsWith(prefix) ? n.slice(prefix.length) : n)),
    has: (name) => store.has(full(name)),
    info: (name) => ({ ...store.info(full(name)), name }),
    data: (name, request) => store.data(full(name), request),
    float32: (name, shape) => store.float32(full(name), shape),
  };
}
