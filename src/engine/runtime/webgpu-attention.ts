/**
 * Whether this WebGPU adapter computes onnxruntime's fused attention right. onnxruntime 1.29's WebGPU
 * MultiHeadAttention takes a flash-attention path for heads whose width is a multiple of 4, and on Mesa's
 * lavapipe that path is 10–25 % off (measured 2026-12-05: heads of 4, 8, 16, 40 and 64 wide; 6-wide heads,
 * which take the plain path, and the decomposition agree to 4e-7). A lent H100's Vulkan driver does not
 * share it (the check passed there; docs/PERFORMANCE.md, 2026-12-05); which other adapters do is not known,
 * so each process measures its own once: one small attention, fused on WebGPU, against its
 * decomposition on the CPU provider. Where it disagrees, attention runs as its decomposition on this
 * adapter (correct, slower), and the log says so once.
 */

import { childLogger } from "../../log.js";
import { mulberry32 } from "../diffusion/rng.js";
import { relativeDistance } from "../distance.js";
import { emitGraph, serializeInline } from "../graph/emit.js";
import { Graph } from "../graph/graph.js";
import { attention } from "../graph/index.js";
import { ort } from "./ort.js";

const log = childLogger("runtime");

/** The check's shape: 2 heads of 8 (a flash-attention width), 32 queries over 24 keys. */
const [HEADS, WIDTH, L, S] = [2, 8, 32, 24];
/** The fused result's largest allowed distance from the decomposition's: float32 rounding is ≈ 1e-7 here,
 *  the fault ≈ 1e-1. */
const ATTENTION_CHECK_BOUND = 1e-4;

let verdict: Promise<boolean> | undefined;

/** true when fused attention on this WebGPU adapter matches the decomposition within ATTENTION_CHECK_BOUND. */
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

/** ‖fused on WebGPU − decomposed on the CPU provider‖ / ‖decomposed‖ for one attention. */
async function fusedAttentionError(): Promise<number> {
  const D = HEADS * WIDTH;
  const g = new Graph("webgpu-attention-check");
  const t = (name: string, len: number) => g.input(name, "float32", [1, len, D]);
  g.output("y", attention(t("q", L), t("k", S), t("v", S), { heads: HEADS }));
  const r = mulberry32(1);
  const feed = (len: number) =>
    new ort.Tensor(
      "float32",
      Float32Array.from({ length: len * D }, () => 4 * r() - 2),
      [1, len, D],
    );
  const feeds = { q: feed(L), k: feed(S), v: feed(S) };
  const run = async (device: "webgpu" | "cpu") => {
    const model = serializeInline(emitGraph(g, { device, fuse: device === "webgpu" }));
    const session = await ort.InferenceSession.create(model, { executionProviders: [device] });
    try {
      return (await session.run(feeds)).y?.data as Float32Array;
    } finally {
      await session.release();
    }
  };
  return relativeDistance(await run("webgpu"), await run("cpu"));
}
