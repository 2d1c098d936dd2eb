/**
 * Random weights for full-size benchmark graphs: a WeightSource that answers any parameter with the shape
 * the network builder asks for, and fills its bytes only when the graph writes them (one tensor at a
 * time, so an SD 1.5 UNet never needs its 3.4 GB in memory at once). Timings do not depend on weight
 * values; the scale (uniform ±1/√fan_in, norms at 1, biases at 0) just keeps activations finite in fp16.
 */
import { f32ToF16 } from "../graph/dtype.js";
import type { WeightSource } from "./params.js";
import type { WeightData, WeightRequest } from "./weights.js";

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function fill(name: string, shape: readonly number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const leaf = name.slice(name.lastIndexOf(".") + 1);
  if (shape.length === 1) {
    // Norm scales 1, every bias and norm shift 0.
    if (leaf === "weight") out.fill(1);
    return out;
  }
  const fanIn = n / (shape[0] as number);
  const bound = 1 / Math.sqrt(fanIn);
  let x = hash(name) || 1;
  for (let i = 0; i < n; i++) {
    // xorshift32: fast and plenty random for timing.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) / 4294967296 - 0.5) * 2 * bound;
  }
  return out;
}

/** A WeightSource of random weights in `dtype` (float32 unless the request asks otherwise). */
export function randomWeights(
  dtype: "float32" | "float16" = "float32",
): WeightSource & { count: () => number } {
  let params = 0;
  return {
    has: () => true,
    count: () => params,
    data(name: string, request?: WeightRequest): WeightData {
      const shape = request?.shape;
      if (!shape) throw new Error(`random weights: "${name}" requested without a shape`);
      const dt = request?.dtype ?? dtype;
      params += shape.reduce((a, b) => a * b, 1);
      return {
        dtype: dt,
        shape,
        bytes: () => {
          const f = fill(name, shape);
          const out = dt === "float16" ? f32ToF16(f) : f;
          return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
        },
      };
    },
  };
}
