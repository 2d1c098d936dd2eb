import { describe, expect, it } from "vitest";
import {
  add,
  attendValues,
  attention,
  attentionProbs,
  cast,
  causalMask,
  conv2d,
  Graph,
  GraphError,
  gather,
  groupNorm,
  layerNorm,
  matmul,
  reshape,
  slice,
  softmax,
  upsampleNearest2d,
} from "../../../src/engine/graph/index.js";
import { createSession } from "../../../src/engine/runtime/index.js";
import {
  type ConvGeom,
  host,
  randn,
  refConv,
  refMatmul,
  refSoftmaxRows,
  relError,
  rng,
  values,
} from "./helpers.js";

// float32 results against float64 loop references: 1e-5 relative covers float32 rounding at these sizes.
const F32 = 1e-5;

describe("graph forward on the CPU provider", () => {
  it("matmul → softmax and a strided, padded conv2d match loop references", async () => {
    const r = rng(1);
    const g = new Graph("fwd");
    const a = g.input("a", "float32", [3, 5]);
    const b = g.input("b", "float32", [5, 4]);
    g.output("p", softmax(matmul(a, b), -1));
    const geom: ConvGeom = {
      N: 2,
      C: 4,
      H: 7,
      W: 6,
      O: 6,
      KH: 3,
      KW: 3,
      stride: [2, 1],
      pads: [1, 0, 1, 2],
      dilation: [1, 2],
      groups: 2,
    };
    const x = g.input("x", "float32", [geom.N, geom.C, geom.H, geom.W]);
    const w = g.input("w", "float32", [geom.O, geom.C / geom.groups, geom.KH, geom.KW]);
    g.output(
      "c",
      conv2d(x, w, null, { stride: geom.stride, padding: geom.pads, dilation: geom.dilation, groups: 2 }),
    );
    const av = randn(r, 15);
    const bv = randn(r, 20);
    const xv = randn(r, 2 * 4 * 7 * 6);
    const wv = randn(r, 6 * 2 * 9);
    const s = await createSession(g, { device: "cpu" });
    const out = await s.run({
      a: host("float32", [3, 5], av),
      b: host("float32", [5, 4], bv),
      x: host("float32", [2, 4, 7, 6], xv),
      w: host("float32", [6, 2, 3, 3], wv),
    });
    await s.release();
    expect(relError(values(out.p), refSoftmaxRows(refMatmul(av, bv, 3, 5, 4), 4))).toBeLessThan(F32);
    const ref = refConv(xv, wv, geom);
    expect(out.c?.shape).toEqual(ref.shape);
    expect(relError(values(out.c), ref.y)).toBeLessThan(F32);
  });

  it("fused layer norm, group norm and attention agree with their primitive expansions", async () => {
    const build = (dtype: "float32" | "float64") => {
      const g = new Graph(`fused-${dtype}`);
      const x = g.input("x", dtype, [2, 6, 3, 4]);
      const gamma = g.input("gamma", dtype, [6]);
      const beta = g.input("beta", dtype, [6]);
      g.output("gn", groupNorm(x, 3, gamma, beta, 1e-5));
      const t = g.input("t", dtype, [2, 5, 8]);
      const lg = g.input("lg", dtype, [8]);
      const lb = g.input("lb", dtype, [8]);
      g.output("ln", layerNorm(t, lg, lb, 1e-5));
      const kv = g.input("kv", dtype, [2, 3, 8]);
      g.output("cross", attention(t, kv, kv, { heads: 2 }));
      g.output("causal", attention(t, t, t, { heads: 4, mask: causalMask(t, 5) }));
      const probs = attentionProbs(t, kv, { heads: 2 });
      g.output("probs", probs);
      g.output("split", attendValues(probs, kv));
      return g;
    };
    const feeds = (dtype: "float32" | "float64") => ({
      x: host(dtype, [2, 6, 3, 4], randnFixed(144, 3)),
      gamma: host(dtype, [6], randnFixed(6, 4)),
      beta: host(dtype, [6], randnFixed(6, 5)),
      t: host(dtype, [2, 5, 8], randnFixed(80, 6)),
      lg: host(dtype, [8], randnFixed(8, 7)),
      lb: host(dtype, [8], randnFixed(8, 8)),
      kv: host(dtype, [2, 3, 8], randnFixed(48, 9)),
    });
    // float32 fused (LayerNormalization, InstanceNormalization, MultiHeadAttention) against the float64
    // primitive expansion, and the float32 primitive expansion against it too.
    const s32 = await createSession(build("float32"), { device: "cpu" });
    const p32 = await createSession(build("float32"), { device: "cpu", fuse: false });
    const s64 = await createSession(build("float64"), { device: "cpu", fuse: false });
    const o32 = await s32.run(feeds("float32"));
    const u32 = await p32.run(feeds("float32"));
    const o64 = await s64.run(feeds("float64"));
    await Promise.all([s32.release(), p32.release(), s64.release()]);
    for (const k of ["gn", "ln", "cross", "causal"]) {
      expect(relError(values(o32[k]), values(o64[k])), k).toBeLessThan(F32);
      expect(relError(values(u32[k]), values(o64[k])), k).toBeLessThan(F32);
    }
    // attendValues(attentionProbs(…)) is attention(…), and each map row is a distribution.
    expect(relError(values(o64.split), values(o64.cross))).toBeLessThan(1e-12);
    const p = values(o64.probs);
    for (let row = 0; row < p.length / 3; row++) {
      expect(p.slice(3 * row, 3 * row + 3).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    }
    // The default scale is 1/√(head dim), torch's scaled_dot_product_attention's: the map against a loop
    // reference softmax_j(Σ_d q[b,i,h·4+d]·k[b,j,h·4+d] / √4). Measured: within 1e-12; 1/√8 (the whole
    // width's scale) puts it 1.3e-1 off.
    const [tv, kvv] = [values(feeds("float64").t), values(feeds("float64").kv)];
    const scores: number[] = [];
    for (let b = 0; b < 2; b++)
      for (let h = 0; h < 2; h++)
        for (let i = 0; i < 5; i++)
          for (let j = 0; j < 3; j++) {
            let s = 0;
            for (let d = 0; d < 4; d++)
              s += (tv[(b * 5 + i) * 8 + h * 4 + d] as number) * (kvv[(b * 3 + j) * 8 + h * 4 + d] as number);
            scores.push(s / Math.sqrt(4));
          }
    expect(relError(p, refSoftmaxRows(scores, 3))).toBeLessThan(1e-12);
    // The causal mask: the first token attends only to itself, so its output is its own value row.
    expect(relError(values(o64.causal).slice(0, 8), values(feeds("float64").t).slice(0, 8))).toBeLessThan(
      1e-12,
    );
  });

  it("gathers embedding rows and upsamples to an odd size like torch's nearest", async () => {
    const g = new Graph("gather");
    const table = g.constant([0, 1, 10, 11, 20, 21], "float32", [3, 2]);
    const ids = g.input("ids", "int64", [1, 4]);
    g.output("e", gather(table, ids, 0));
    const img = g.constant([1, 2, 3, 4], "float32", [1, 1, 2, 2]);
    g.output("up", upsampleNearest2d(img, 3, 5));
    const s = await createSession(g, { device: "cpu" });
    const out = await s.run({
      ids: { dtype: "int64", shape: [1, 4], data: BigInt64Array.from([2n, 0n, 1n, 2n]) },
    });
    await s.release();
    expect(values(out.e)).toEqual([20, 21, 0, 1, 10, 11, 20, 21]);
    // torch.nn.functional.interpolate(x, size=(3, 5), mode="nearest") of [[1,2],[3,4]]
    expect(values(out.up)).toEqual([1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]);
  });

  it("rejects bad input at build time with the op, shapes and cause", () => {
    const g = new Graph("bad");
    const a = g.input("a", "float32", [2, 3]);
    const b = g.input("b", "float32", [4, 5]);
    expect(() => matmul(a, b)).toThrow(
      /matmul\(float32\[2,3\] "a", float32\[4,5\] "b"\): inner dimensions 3 and 4 differ/,
    );
    const x = g.input("x", "float32", [1, 3, 8, 8]);
    const w = g.input("w", "float32", [4, 2, 3, 3]);
    expect(() => conv2d(x, w)).toThrow(/conv2d.*w expects 2 input channels, x has 3/);
    const h = g.input("h", "float16", [2, 3]);
    expect(() => matmul(a, h)).toThrow(GraphError);
    expect(() => groupNorm(x, 2, g.input("gg", "float32", [3]), g.input("gb", "float32", [3]))).toThrow(
      /groupNorm.*3 channels cannot be split into 2 groups/,
    );
    expect(() => g.input("a", "float32", [1])).toThrow(/already used/);
    expect(() => cast(a, "float8" as never)).toThrow(
      /cast\(float32\[2,3\] "a"\): unsupported dtype "float8"/,
    );
    expect(() => reshape(a, [4, -1])).toThrow(
      /reshape\(float32\[2,3\] "a"\): cannot reshape 6 elements to \[4,-1\]/,
    );
    expect(() => add(a, b)).toThrow(/add\(.*\): shapes \[2,3\] and \[4,5\] do not broadcast/);
    expect(() => slice(a, [0], [1], [2])).toThrow(/slice\(.*\): axis 2 is out of range for rank 2/);
  });
});

function randnFixed(n: number, seed: number): number[] {
  return randn(rng(seed), n);
}
