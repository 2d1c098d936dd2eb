/**
 * Whether this WebGPU adapter computes onnxruntime's fused attention right. onnxruntime 1.29's WebGPU
 * MultiHeadAttention takes a flash-attention path for heads whose width is a multiple of 4, and on Mesa's
 * lavapipe that path is 10–25 % off (measured 2026-12-05: heads of 4, 8, 16, 40 and 64 wide; 6-wide heads,
 * which take the plain path, and the decomposition agree to 4e-7). Which real adapters share the fault is
 * not known, so each process measures its own once: one small attention, fused on WebGPU, against the same
 * attention computed here on the host. Where it disagrees, attention runs as its decomposition on this
 * adapter (correct, slower), and the log says so once.
 */

import { childLogger } from "../../log.js";
import { emitGraph, serializeInline } from "../graph/emit.js";
import { Graph } from "../graph/graph.js";
import { attention } from "../graph/index.js";
import { ort } from "./ort.js";

const log = childLogger("runtime");

/** The check's shape: 2 heads of 8 (a flash-attention width), 32 queries over 24 keys. */
const [HEADS, WIDTH, L, S] = [2, 8, 32, 24];
/** The fused result's largest allowed error relative to the host's: float32 rounding is ≈ 1e-7 here, the
 *  fault ≈ 1e-1. */
export const ATTENTION_CHECK_BOUND = 1e-4;

let verdict: Promise<boolean> | undefined;

/** true when fused attention on this WebGPU adapter matches the host's within ATTENTION_CHECK_BOUND. */
export function webgpuAttentionAgrees(): Promise<boolean> {
  verdict ??= (async () => {
    const error = await fusedAttentionError();
    const ok = error <= ATTENTION_CHECK_BOUND;
    if (!ok)
      log.warn(
        { error, bound: ATTENTION_CHECK_BOUND },
        "WebGPU's fused attention disagrees with the reference on this adapter: attention runs decomposed (correct, slower)",
      );
    return ok;
  })();
  return verdict;
}

/** Deterministic inputs in [-2, 2). */
function values(n: number, seed: number): Float32Array {
  let x = seed;
  return Float32Array.from({ length: n }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return (x / 2147483648) * 4 - 2;
  });
}

/** max |fused − host| / max |host| for softmax(q·kᵀ/√d)·v per head. */
async function fusedAttentionError(): Promise<number> {
  const D = HEADS * WIDTH;
  const [q, k, v] = [values(L * D, 1), values(S * D, 2), values(S * D, 3)];
  const g = new Graph("webgpu-attention-check");
  const t = (name: string, len: number) => g.input(name, "float32", [1, len, D]);
  g.output("y", attention(t("q", L), t("k", S), t("v", S), { heads: HEADS }));
  const session = await ort.InferenceSession.create(serializeInline(emitGraph(g, { device: "webgpu" })), {
    executionProviders: ["webgpu"],
  });
  let got: Float32Array;
  try {
    const feed = (data: Float32Array, len: number) => new ort.Tensor("float32", data, [1, len, D]);
    const out = await session.run({ q: feed(q, L), k: feed(k, S), v: feed(v, S) });
    got = (out.y as ort.Tensor).data as Float32Array;
  } finally {
    await session.release();
  }
  let diff = 0;
  let scale = 0;
  for (let h = 0; h < HEADS; h++) {
    for (let i = 0; i < L; i++) {
      const scores = Array.from({ length: S }, (_, j) => {
        let s = 0;
        for (let d = 0; d < WIDTH; d++)
          s += (q[i * D + h * WIDTH + d] as number) * (k[j * D + h * WIDTH + d] as number);
        return s / Math.sqrt(WIDTH);
      });
      const top = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - top));
      const sum = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < WIDTH; d++) {
        let want = 0;
        for (let j = 0; j < S; j++) want += ((e[j] as number) / sum) * (v[j * D + h * WIDTH + d] as number);
        diff = Math.max(diff, Math.abs((got[i * D + h * WIDTH + d] as number) - want));
        scale = Math.max(scale, Math.abs(want));
      }
    }
  }
  return diff / scale;
}
