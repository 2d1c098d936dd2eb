import { describe, expect, it } from "vitest";
import * as G from "../../../src/engine/graph/index.js";
import { createSession } from "../../../src/engine/runtime/index.js";
import { host, randn, relError, rng, values } from "./helpers.js";

const opTypes = (g: G.Graph) => G.emitGraph(g).model.graph.node.map((n) => n.opType);
const count = (ops: string[], op: string) => ops.filter((o) => o === op).length;

describe("grad", () => {
  it("refuses non-float wrt tensors and non-scalar losses at build time", () => {
    const g = new G.Graph("errors");
    const table = g.input("table", "float32", [10, 4]);
    const ids = g.input("ids", "int64", [3]);
    const mask = g.input("mask", "bool", [3, 4]);
    const e = G.where(mask, G.gather(table, ids), 0);
    const loss = G.reduceSum(e, [0, 1]);
    expect(() => G.grad(loss, [ids])).toThrow(
      /grad: cannot differentiate with respect to int64\[3\] "ids": only float tensors/,
    );
    expect(() => G.grad(loss, [mask])).toThrow(/bool\[3,4\] "mask"/);
    expect(() => G.grad(e, [table])).toThrow(/the loss must be a scalar, got float32\[3,4\]/);
    expect(() => G.grad(loss, [new G.Graph("other").input("t", "float32", [1])])).toThrow(/another graph/);
  });

  it("builds backward nodes only on the path from wrt to the loss, and only the input gradients needed", () => {
    const g = new G.Graph("paths");
    const x = g.input("x", "float32", [2, 3]);
    const w = g.input("w", "float32", [3, 4]);
    const a = g.input("a", "float32", [4, 5]);
    const b = g.input("b", "float32", [5, 6]);
    // a forward branch no output needs: pruned at emission
    G.softmax(G.matmul(a, b), -1);
    const loss = G.add(G.reduceSum(G.matmul(x, w), [0, 1]), G.reduceSum(G.matmul(a, b), [0, 1]));
    g.output("loss", loss);
    const [gx] = G.grad(loss, [x]) as [G.Tensor];
    g.output("gx", gx);
    const ops = opTypes(g);
    // two forward matmuls + dL/dx = g·wᵀ; no dL/dw, nothing for the a·b branch, no softmax
    expect(count(ops, "MatMul")).toBe(3);
    expect(count(ops, "Softmax")).toBe(0);
  });

  it("differentiates attention by its own rule: fused forward on a GPU, maps recomputed per query chunk", () => {
    // [B=1, heads=2, L=8, S=8] float32 maps: 64 B per query row; a 128-byte budget: 2 rows per chunk.
    const build = () => {
      const g = new G.Graph("attention-grad");
      const q = g.input("q", "float32", [1, 8, 4]);
      const kv = g.input("kv", "float32", [1, 8, 4]);
      const y = G.attention(q, kv, kv, { heads: 2, gradChunkBytes: 128 });
      const loss = G.reduceSum(G.mul(y, y), [0, 1, 2]);
      g.output("loss", loss);
      G.grad(loss, [q, kv]).forEach((t, i) => {
        g.output(`g${i}`, t);
      });
      return g;
    };
    const ops = (device: "cuda" | "cpu") =>
      G.emitGraph(build(), { device }).model.graph.node.map((n) => n.opType);
    const cuda = ops("cuda");
    expect(count(cuda, "MultiHeadAttention")).toBe(1);
    // 4 chunks, each with its own softmax; no map of the whole [1, 2, 8, 8] is kept from the forward.
    expect(count(cuda, "Softmax")).toBe(4);
    // The CPU keeps the decomposed forward (its fused kernel's float32 rounding is worse): one more softmax.
    const cpu = ops("cpu");
    expect(count(cpu, "MultiHeadAttention")).toBe(0);
    expect(count(cpu, "Softmax")).toBe(5);
  });

  it("sums attention's gradient chunks as rows of a common width, and needs no sum for one chunk", () => {
    // onnxruntime's CUDA Concat of inputs of unequal lengths uploads one int64 per index of the
    // concatenated axis on every run: as flat vectors the chunks' [dQ | dK | dV] made one per element.
    const concats = (gradChunkBytes: number) => {
      const g = new G.Graph("attention-grad-sum");
      const q = g.input("q", "float32", [1, 8, 4]);
      const k = g.input("k", "float32", [1, 6, 4]);
      const v = g.input("v", "float32", [1, 6, 6]);
      const y = G.attention(q, k, v, { heads: 2, gradChunkBytes });
      const loss = G.reduceSum(G.mul(y, y), [0, 1, 2]);
      G.grad(loss, [q, k, v]);
      return g.nodes.filter((n) => n.op === "Concat").map((n) => n.outputs[0]?.shape);
    };
    // [B=1, heads=2, S=6] float32 scores: 48 B per query row; 96 B: 2 rows per chunk, 4 chunks.
    // dQ (padded to all 8 rows) 32 values, dK 24, dV 36: rows of gcd = 4, 23 of them per chunk.
    expect(concats(96)).toEqual(Array(4).fill([23, 4]));
    expect(concats(1024)).toEqual([]);
  });

  it("differentiates composites through their expansion and keeps the fused kernel elsewhere", () => {
    const g = new G.Graph("fusion");
    const x = g.input("x", "float32", [2, 4]);
    const c = g.input("c", "float32", [2, 4]);
    const gamma = g.input("gamma", "float32", [4]);
    const beta = g.input("beta", "float32", [4]);
    const onPath = G.layerNorm(x, gamma, beta);
    const offPath = G.layerNorm(c, gamma, beta);
    const loss = G.reduceSum(G.mul(onPath, offPath), [0, 1]);
    g.output("loss", loss);
    g.output("gx", G.grad(loss, [x])[0] as G.Tensor);
    const ops = opTypes(g);
    // Off the path the fused kernel; on it the expansion: Standardize's two-pass forward (two ReduceMeans)
    // and its one-formula VJP (two more).
    expect(count(ops, "LayerNormalization")).toBe(1);
    expect(count(ops, "ReduceMean")).toBe(4);
  });

  it("builds, emits and runs graphs deeper than recursion over the JS stack would allow (30 000 nodes)", async () => {
    // x ← x + c·sin(x), 5 000 times: 15 000 forward nodes in one chain and a backward chain as long
    // hanging off it, so walking back from the gradient goes 30 000 nodes deep.
    const steps = 5_000;
    const c = 1e-4;
    const g = new G.Graph("deep");
    const x = g.input("x", "float64", [4]);
    let h = x;
    for (let i = 0; i < steps; i++) h = G.add(h, G.mul(G.sin(h), c));
    const loss = G.reduceSum(h, [0]);
    g.output("loss", loss);
    g.output("gx", G.grad(loss, [x])[0] as G.Tensor);
    // forward: 3 per step; backward: cos, and the chain rule's mul and add per step
    expect(G.emitGraph(g).model.graph.node.length).toBeGreaterThan(6 * steps);
    // onnxruntime's optimizers cost more than linear time in the node count; this graph runs without them.
    const s = await createSession(g, { device: "cpu", optimization: "disabled" });
    const x0 = [0.5, -0.3, 1, 2];
    const out = await s.run({ x: host("float64", [4], x0) });
    await s.release();
    // The same recurrence on the host, with d x_n / d x_0 = Π (1 + c·cos x_i).
    const want = x0.map((v) => {
      let y = v;
      let d = 1;
      for (let i = 0; i < steps; i++) {
        d *= 1 + c * Math.cos(y);
        y += c * Math.sin(y);
      }
      return { y, d };
    });
    // float64 throughout: measured 0 (loss) and 6e-15 (gradient) from the host's recurrence.
    expect(relError(values(out.loss), [want.reduce((s2, w) => s2 + w.y, 0)])).toBeLessThan(1e-12);
    expect(
      relError(
        values(out.gx),
        want.map((w) => w.d),
      ),
    ).toBeLessThan(1e-12);
  });

  it("gives zeros for a wrt tensor the loss does not depend on, and sums gradients over fan-out", async () => {
    const g = new G.Graph("zeros");
    const x = g.input("x", "float64", [3]);
    const unused = g.input("unused", "float64", [2, 2]);
    const y = G.add(G.mul(x, x), G.mul(x, 3)); // dy/dx = 2x + 3
    const loss = G.reduceSum(y, [0]);
    const [gx, gu] = G.grad(loss, [x, unused]) as [G.Tensor, G.Tensor];
    g.output("gx", gx);
    g.output("gu", gu);
    const s = await createSession(g, { device: "cpu" });
    expect(s.inputNames).toEqual(["x"]);
    const out = await s.run({ x: host("float64", [3], [1, -2, 0.5]) });
    await s.release();
    expect(values(out.gx)).toEqual([5, -1, 4]);
    expect(values(out.gu)).toEqual([0, 0, 0, 0]);
  });

  it("differentiates float16 graphs (norms, softmax, loss in float32) close to the float32 gradients", async () => {
    const r = rng(12);
    const hv = randn(r, 2 * 6 * 8);
    const wv = randn(r, 8 * 8).map((v) => v / 3);
    const xv = randn(r, 2 * 4 * 4 * 4);
    const cv = randn(r, 4 * 4 * 9).map((v) => v / 4);
    const build = (dt: "float32" | "float16") => {
      const g = new G.Graph(`grad-${dt}`);
      const h = g.input("h", "float32", [2, 6, 8]);
      const w = g.input("w", "float32", [8, 8]);
      const x = g.input("x", "float32", [2, 4, 4, 4]);
      const c = g.input("c", "float32", [4, 4, 3, 3]);
      const one = (n: number) => G.cast(g.constant(new Float32Array(n).fill(1), "float32", [n]), dt);
      const zero = (n: number) => G.cast(g.constant(new Float32Array(n), "float32", [n]), dt);
      const q = G.linear(G.layerNorm(G.cast(h, dt), one(8), zero(8)), G.cast(w, dt));
      const a = G.attention(q, q, q, { heads: 2 });
      const y = G.conv2d(G.silu(G.groupNorm(G.cast(x, dt), 2, one(4), zero(4))), G.cast(c, dt), null, {
        padding: 1,
      });
      // the loss in float32 whatever the compute dtype
      const loss = G.add(
        G.reduceMean(G.mul(G.cast(a, "float32"), G.cast(a, "float32")), [0, 1, 2]),
        G.reduceMean(G.pow(G.cast(y, "float32"), 2), [0, 1, 2, 3]),
      );
      g.output("loss", loss);
      G.grad(loss, [h, w, x, c]).forEach((t, i) => {
        g.output(`g${i}`, t);
      });
      return g;
    };
    const feeds = {
      h: host("float32", [2, 6, 8], hv),
      w: host("float32", [8, 8], wv),
      x: host("float32", [2, 4, 4, 4], xv),
      c: host("float32", [4, 4, 3, 3], cv),
    };
    const s16 = await createSession(build("float16"), { device: "cpu" });
    const s32 = await createSession(build("float32"), { device: "cpu" });
    const o16 = await s16.run(feeds);
    const o32 = await s32.run(feeds);
    await Promise.all([s16.release(), s32.release()]);
    // fp16 keeps ~3 significant digits; a handful of roundings per gradient stay within 2e-2 of float32.
    for (const k of ["loss", "g0", "g1", "g2", "g3"])
      expect(relError(values(o16[k]), values(o32[k])), k).toBeLessThan(2e-2);
  });

  it("differentiates norms through Standardize's one-formula VJP, float32 matching float64", async () => {
    const r = rng(33);
    const xv = randn(r, 2 * 8 * 5 * 3).map((v) => 3 + 2 * v); // an offset mean, as activations have
    const gv = randn(r, 8);
    const bv = randn(r, 8);
    const wv = randn(r, 2 * 8 * 5 * 3);
    const build = (dtype: "float32" | "float64") => {
      const g = new G.Graph(`norms-${dtype}`);
      const x = g.input("x", dtype, [2, 8, 5, 3]);
      const gamma = g.input("gamma", dtype, [8]);
      const beta = g.input("beta", dtype, [8]);
      const w = g.input("w", dtype, [2, 8, 5, 3]);
      const gn = G.groupNorm(x, 4, gamma, beta, 1e-5);
      const ln = G.layerNorm(G.transpose(gn, [0, 2, 3, 1]), gamma, beta, 1e-5);
      const loss = G.reduceSum(G.mul(G.transpose(ln, [0, 3, 1, 2]), w), [0, 1, 2, 3], false);
      G.grad(loss, [x, gamma, beta]).forEach((d, i) => {
        g.output(`d${i}`, d);
      });
      return g;
    };
    const ops = G.emitGraph(build("float32")).model.graph.node.map((n) => n.opType);
    // Two norms: each a forward Sqrt, and no Sqrt, Neg or Expand from differentiating the expansion.
    expect(ops.filter((o) => o === "Sqrt")).toHaveLength(2);
    expect(ops).not.toContain("Neg");
    const run = async (dtype: "float32" | "float64") => {
      const s = await createSession(build(dtype), { device: "cpu" });
      const out = await s.run({
        x: host(dtype, [2, 8, 5, 3], xv),
        gamma: host(dtype, [8], gv),
        beta: host(dtype, [8], bv),
        w: host(dtype, [2, 8, 5, 3], wv),
      });
      await s.release();
      return [out.d0, out.d1, out.d2].map(values);
    };
    const [f32, f64] = [await run("float32"), await run("float64")];
    // float32 rounding through two norms and their VJPs on O(1) values: well under 1e-4.
    f32.forEach((d, i) => {
      expect(relError(d, f64[i] as number[])).toBeLessThan(1e-4);
    });
  });
});
