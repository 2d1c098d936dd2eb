/**
 * The fp16 policy (docs/ENGINE.md): softmax, reductions and norms given float16 compute in float32 and
 * cast back; the loss and the gradient outputs are float32. onnxruntime's CPU provider cannot show why:
 * it computes a float16 graph in float32 anyway (its kernels upcast, and it drops the casts between them —
 * a raw float16 ReduceMean comes back unrounded). So the numerical checks here run with float16 storage
 * emulated (test/helpers/half-emulation.ts): every float16 value an op writes is rounded to what float16
 * holds, and a float16 reduction accumulates in float16 — what a device with native float16 kernels does.
 */
import { describe, expect, it } from "vitest";
import * as G from "../../../src/engine/graph/index.js";
import { createSession } from "../../../src/engine/runtime/index.js";
import { withHalfStorage } from "../../helpers/half-emulation.js";
import { host, randn, relError, rng, values } from "./helpers.js";

/** Values float16 holds exactly, so that float16 and float32 graphs see the same inputs. */
const half = (v: number[]) => Array.from(G.f16ToF32(G.f32ToF16(Float32Array.from(v))));

/** Runs `build(dt)` in float16 (storage emulated) and in float32 on the same feeds. */
async function both(
  build: (dt: "float16" | "float32") => G.Graph,
  feeds: Record<string, ReturnType<typeof host>>,
) {
  const run = async (dt: "float16" | "float32") => {
    const s = await (dt === "float16"
      ? withHalfStorage(() => createSession(build(dt), { device: "cpu" }))
      : createSession(build(dt), { device: "cpu" }));
    const out = await s.run(feeds);
    await s.release();
    return out;
  };
  return { f16: await run("float16"), f32: await run("float32") };
}

/** The ops whose float16 form loses what the policy keeps: each must see float32 values. */
const WIDE = new Set(["Softmax", "ReduceSum", "ReduceMean", "Standardize", "LayerNorm", "GroupNorm"]);

describe("float16 graphs keep softmax, reductions, norms and the loss in float32", () => {
  it("builds every softmax, reduction and norm of a float16 graph, forward and backward, on float32 values", () => {
    const g = new G.Graph("fp16-policy");
    const x = g.input("x", "float32", [2, 8, 16]);
    const h = G.cast(x, "float16");
    const one = G.cast(g.constant(new Float32Array(16).fill(1), "float32", [16]), "float16");
    const zero = G.cast(g.constant(new Float32Array(16), "float32", [16]), "float16");
    const n = G.layerNorm(h, one, zero);
    const gn = G.groupNorm(G.reshape(n, [2, 16, 2, 4]), 4, one, zero);
    const a = G.attention(n, n, n, { heads: 2 });
    const centred = G.sub(a, G.reduceMean(a, [2], true));
    const y = G.add(G.softmax(centred, -1), G.reshape(gn, [2, 8, 16]));
    const loss = G.reduceMean(G.mul(G.cast(y, "float32"), G.cast(y, "float32")), [0, 1, 2]);
    g.output("loss", loss);
    g.output("gx", G.grad(loss, [x])[0] as G.Tensor);
    const wide = g.nodes.filter((node) => WIDE.has(node.op));
    // forward and backward: the softmaxes, the norms' Standardize, the VJPs' and the loss's reductions
    expect(new Set(wide.map((node) => node.op))).toEqual(WIDE);
    for (const node of wide)
      expect((node.inputs[0] as G.Tensor).dtype, `${node.op} #${node.id}`).toBe("float32");
    expect(loss.dtype).toBe("float32");
  });

  it("attention over 2048 keys in float16 stays within its measured distance of float32", async () => {
    // Measured with float16 storage: the output 4.7e-4 from float32, the gradient 9.9e-4 (attention's
    // VJP recomputes the map and its softmax VJP in float32 by construction). A float16 softmax, its
    // Σ exp accumulated in float16, puts the output 1.95e-3 off (4×). Bounds: 1.5× the measurements.
    const r = rng(6);
    const [L, D] = [2048, 16];
    const qv = half(randn(r, L * D).map((v) => v * 1.5));
    const build = (dt: "float16" | "float32") => {
      const g = new G.Graph(`attention-${dt}`);
      const q = g.input("q", "float32", [1, L, D]);
      const h = G.cast(q, dt);
      const a = G.cast(G.attention(h, h, h, { heads: 1 }), "float32");
      const loss = G.reduceMean(G.mul(a, a), [0, 1, 2]);
      g.output("a", a);
      g.output("gq", G.grad(loss, [q])[0] as G.Tensor);
      return g;
    };
    const { f16, f32 } = await both(build, { q: host("float32", [1, L, D], qv) });
    expect(relError(values(f16.a), values(f32.a))).toBeLessThan(7e-4);
    expect(relError(values(f16.gq), values(f32.gq))).toBeLessThan(1.5e-3);
  });

  it("a mean of squares whose sum passes float16's 65 504 (a loss over 4×64×64 values) stays finite", async () => {
    // Σx² over 16 384 values near 3 is 1.6e5: a float16 accumulator overflows to ∞ even adding pairwise;
    // in float32 the mean is 9.5007, which float16 holds as 9.5.
    const xv = half(Array.from({ length: 4 * 64 * 64 }, (_, i) => 3 + Math.sin(i)));
    const build = (dt: "float16" | "float32") => {
      const g = new G.Graph(`mean-${dt}`);
      const h = G.cast(g.input("x", "float32", [4, 64, 64]), dt);
      g.output("m", G.cast(G.reduceMean(G.mul(h, h), [0, 1, 2]), "float32"));
      return g;
    };
    const { f16, f32 } = await both(build, { x: host("float32", [4, 64, 64], xv) });
    const [m16, m32] = [values(f16.m)[0] as number, values(f32.m)[0] as number];
    expect(Math.abs(m16 - m32) / m32).toBeLessThan(2 ** -11);
  });
});
