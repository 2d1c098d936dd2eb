/** Which composites each device runs as one fused kernel, and which as their primitive expansion. */
import { describe, expect, it } from "vitest";
import * as G from "../../../src/engine/graph/index.js";

/** Group norm (4 groups over 8 channels) and layer norm (over 8), default epsilon. */
function normsGraph(): G.Graph {
  const g = new G.Graph("norms");
  const gamma = g.input("gamma", "float32", [8]);
  const beta = g.input("beta", "float32", [8]);
  g.output("gn", G.groupNorm(g.input("x", "float32", [1, 8, 4, 4]), 4, gamma, beta));
  g.output("ln", G.layerNorm(g.input("t", "float32", [1, 5, 8]), gamma, beta));
  return g;
}

/** An emitted model's nodes, and the node that produces each value. */
function withProducers(emitted: G.EmittedModel) {
  const nodes = emitted.model.graph?.node ?? [];
  return [nodes, new Map(nodes.flatMap((n) => (n.output ?? []).map((o) => [o, n])))] as const;
}

describe("fused composites per device", () => {
  const attentionOps = (dtype: "float32" | "float16", width: number, heads: number) => {
    const g = new G.Graph("attention");
    const t = g.input("t", dtype, [1, 6, width]);
    g.output("attn", G.attention(t, t, t, { heads }));
    return (device: "cpu" | "webgpu" | "cuda") =>
      new Set((G.emitGraph(g, { device }).model.graph?.node ?? []).map((n) => n.opType));
  };

  it("runs attention fused on WebGPU only where its key/value tiles fit 16 KiB of workgroup storage", () => {
    // The SD VAE's one 512-wide head in float32: 2 · 16 · 512 · 4 = 65 536 bytes, which onnxruntime 1.29's
    // WebGPU shader asked for on an H100 that allows 49 152 (the photo was not encoded). Decomposed there;
    // CUDA keeps the fused kernel.
    const vae = attentionOps("float32", 512, 1);
    expect(vae("webgpu").has("MultiHeadAttention")).toBe(false);
    expect(vae("webgpu").has("Softmax")).toBe(true);
    expect(vae("cuda").has("MultiHeadAttention")).toBe(true);
    // At the limit: 2 · 16 · 128 · 4 = 16 384 bytes (float32), 2 · 16 · 256 · 2 (float16) — fused.
    expect(attentionOps("float32", 256, 2)("webgpu").has("MultiHeadAttention")).toBe(true);
    expect(attentionOps("float16", 512, 2)("webgpu").has("MultiHeadAttention")).toBe(true);
    // One past it: SD 1.5's 160-wide heads (its 1280-channel level, 8 heads) in float32, and 257-wide in float16.
    expect(attentionOps("float32", 1280, 8)("webgpu").has("MultiHeadAttention")).toBe(false);
    expect(attentionOps("float16", 1280, 8)("webgpu").has("MultiHeadAttention")).toBe(true);
    expect(attentionOps("float16", 514, 2)("webgpu").has("MultiHeadAttention")).toBe(false);
  });

  it("leaves out of fusion the composite ops a predicate excludes, and only those", () => {
    // What a session on a WebGPU adapter whose fused attention is wrong emits (runtime/webgpu-attention.ts).
    const g = new G.Graph("mixed");
    const t = g.input("t", "float32", [1, 6, 16]);
    const gamma = g.input("gamma", "float32", [16]);
    const beta = g.input("beta", "float32", [16]);
    g.output("y", G.attention(G.layerNorm(t, gamma, beta), t, t, { heads: 2 }));
    const ops = (fuse: boolean | ((op: string) => boolean)) =>
      new Set((G.emitGraph(g, { device: "webgpu", fuse }).model.graph?.node ?? []).map((n) => n.opType));
    expect(
      [...ops(true)].filter((o) => o === "LayerNormalization" || o === "MultiHeadAttention"),
    ).toHaveLength(2);
    const mixed = ops((op) => op !== "Attention");
    expect(mixed.has("LayerNormalization")).toBe(true);
    expect(mixed.has("MultiHeadAttention")).toBe(false);
    expect(mixed.has("Softmax")).toBe(true);
    expect(ops(false).has("LayerNormalization")).toBe(false);
  });

  it("runs group and layer norm fused on every device (float32)", () => {
    const g = normsGraph();
    for (const device of ["cpu", "webgpu", "cuda"] as const) {
      const ops = new Set((G.emitGraph(g, { device }).model.graph?.node ?? []).map((n) => n.opType));
      expect(ops.has("InstanceNormalization"), device).toBe(true);
      expect(ops.has("LayerNormalization"), device).toBe(true);
    }
  });

  it("gives every WebGPU group norm one epsilon, its own folded into a scale of the input", () => {
    // onnxruntime 1.29's WebGPU InstanceNormalization runs every node with the first one's epsilon
    // (composites.ts, webgpuEpsilon): Norm(x; ε) = Norm(√(1e-5/ε)·x; 1e-5).
    const g = new G.Graph("epsilons");
    const x = g.input("x", "float32", [1, 8, 4, 4]);
    const gamma = g.input("gamma", "float32", [8]);
    const beta = g.input("beta", "float32", [8]);
    g.output("a", G.groupNorm(x, 4, gamma, beta, 1e-5));
    g.output("b", G.groupNorm(x, 4, gamma, beta, 1e-6));
    const norms = (device: "cpu" | "webgpu") => {
      const emitted = G.emitGraph(g, { device });
      const [nodes, producer] = withProducers(emitted);
      const init = (name: string) => emitted.initializers.find((t) => t.name === name)?.bytes();
      const scalar = (name: string) => new Float32Array((init(name) as Uint8Array).slice().buffer)[0];
      return nodes
        .filter((n) => n.opType === "InstanceNormalization")
        .map((n) => {
          const before = producer.get(n.input?.[0] ?? "");
          const scale = before?.opType === "Mul" ? scalar(before.input?.[1] ?? "") : undefined;
          return { epsilon: n.attribute?.find((a) => a.name === "epsilon")?.f, scale };
        })
        .sort((a, b) => (a.scale ?? 0) - (b.scale ?? 0) || (b.epsilon ?? 0) - (a.epsilon ?? 0));
    };
    expect(norms("cpu")).toEqual([
      { epsilon: 1e-5, scale: undefined },
      { epsilon: 1e-6, scale: undefined },
    ]);
    const webgpu = norms("webgpu");
    expect(webgpu.map((n) => n.epsilon)).toEqual([1e-5, 1e-5]);
    expect(webgpu[0]?.scale).toBeUndefined();
    expect(webgpu[1]?.scale).toBeCloseTo(Math.sqrt(10), 6);
  });

  it("centres the norms' input on WebGPU only, whose kernels take the variance as E[x²] − mean²", () => {
    const g = normsGraph();
    const normInputs = (device: "cpu" | "webgpu" | "cuda") => {
      const [nodes, producer] = withProducers(G.emitGraph(g, { device }));
      return nodes
        .filter((n) => n.opType === "InstanceNormalization" || n.opType === "LayerNormalization")
        .map((n) => {
          const sub = producer.get(n.input?.[0] ?? "");
          const mean = producer.get(sub?.input?.[1] ?? "");
          return `${n.opType}<-${sub?.opType}(${mean?.opType})`;
        });
    };
    expect(normInputs("webgpu").sort()).toEqual([
      "InstanceNormalization<-Sub(ReduceMean)",
      "LayerNormalization<-Sub(ReduceMean)",
    ]);
    for (const device of ["cpu", "cuda"] as const)
      expect(
        normInputs(device).every((s) => !s.includes("Sub")),
        device,
      ).toBe(true);
  });
});
