/** Which composites each device runs as one fused kernel, and which as their primitive expansion. */
import { describe, expect, it } from "vitest";
import * as G from "../../../src/engine/graph/index.js";

describe("fused composites per device", () => {
  it("runs group norm as its expansion on WebGPU, and layer norm and attention fused everywhere", () => {
    const g = new G.Graph("norms");
    const x = g.input("x", "float32", [1, 8, 4, 4]);
    const t = g.input("t", "float32", [1, 5, 8]);
    const gamma = g.input("gamma", "float32", [8]);
    const beta = g.input("beta", "float32", [8]);
    g.output("gn", G.groupNorm(x, 4, gamma, beta));
    g.output("ln", G.layerNorm(t, gamma, beta));
    g.output("attn", G.attention(t, t, t, { heads: 2 }));
    const ops = (device: "cpu" | "webgpu" | "cuda") =>
      new Set((G.emitGraph(g, { device }).model.graph?.node ?? []).map((n) => n.opType));
    for (const device of ["cpu", "cuda"] as const)
      expect(ops(device).has("InstanceNormalization"), device).toBe(true);
    // onnxruntime 1.29's WebGPU InstanceNormalization cannot build its pipeline for a 512² VAE's norms
    // (64 KiB of workgroup storage where the device allows 48): there group norm is ReduceMean and friends.
    const webgpu = ops("webgpu");
    expect(webgpu.has("InstanceNormalization")).toBe(false);
    expect(webgpu.has("ReduceMean")).toBe(true);
    for (const device of ["cpu", "webgpu", "cuda"] as const) {
      expect(ops(device).has("LayerNormalization"), device).toBe(true);
      expect(ops(device).has("MultiHeadAttention"), device).toBe(true);
    }
  });
});
