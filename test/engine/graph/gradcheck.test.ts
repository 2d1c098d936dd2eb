/**
 * Every differentiable op and two composite blocks against central finite differences, on the CPU
 * provider. float64 where onnxruntime's CPU provider has float64 kernels; Conv, ConvTranspose and Erf
 * have none, so those are checked in float32 (a looser, stated tolerance) plus, for conv, against a
 * float64 loop reference of its gradients.
 */
import { describe, expect, it } from "vitest";
import type { DType, Graph, Tensor } from "../../../src/engine/graph/index.js";
import * as G from "../../../src/engine/graph/index.js";
import { createSession, type HostTensor } from "../../../src/engine/runtime/index.js";
import { type ConvGeom, convOutSize, host, randn, refConv, relError, rng, values } from "./helpers.js";

type Gen = "normal" | "positive" | "away0";

interface Spec {
  shape: number[];
  gen?: Gen;
}

interface Check {
  dtype?: DType;
  /** Max relative error of the analytic gradient against finite differences. */
  tol: number;
  /** Finite-difference step. */
  h: number;
  /** Elements perturbed per input (all of them when fewer). */
  maxElems?: number;
}

// float64: the central difference's error is O(h²) + O(ε/h) ≈ 1e-10 at h = 1e-5, so 1e-6 leaves room
// only for real mistakes.
const F64: Check = { tol: 1e-6, h: 1e-5 };
// float32 on a function that is linear in the perturbed input (conv, transposed conv, nearest resize):
// no truncation error, rounding of the summed loss ≈ 1e-7·|loss|/h.
const F32_LINEAR: Check = { dtype: "float32", tol: 2e-3, h: 1e-2 };
// float32 on a smooth nonlinear function: truncation h²·f'''/6 ≈ 2e-5 plus rounding as above.
const F32_SMOOTH: Check = { dtype: "float32", tol: 5e-3, h: 1e-2 };

function generate(r: () => number, n: number, gen: Gen = "normal"): number[] {
  const v = randn(r, n);
  if (gen === "positive") return v.map((x) => 0.5 + Math.abs(x));
  if (gen === "away0") return v.map((x) => Math.sign(x || 1) * (0.2 + Math.abs(x)));
  return v;
}

const allAxes = (t: Tensor) => t.shape.map((_, i) => i);

/** Builds loss = Σ f(xs) ⊙ R (R fixed random), differentiates it, and compares with finite differences. */
async function gradcheck(
  seed: number,
  specs: Spec[],
  f: (g: Graph, xs: Tensor[]) => Tensor,
  check: Check,
): Promise<{ analytic: number[][]; inputs: number[][]; r: number[]; y: Tensor }> {
  const dtype = check.dtype ?? "float64";
  const r = rng(seed);
  const g = new G.Graph(`gradcheck-${seed}`);
  const xs = specs.map((s, i) => g.input(`x${i}`, dtype, s.shape));
  const y = f(g, xs);
  const weights = randn(r, G.numel(y.shape));
  const R = g.constant(
    dtype === "float64" ? Float64Array.from(weights) : Float32Array.from(weights),
    dtype,
    y.shape,
  );
  const loss = G.reduceSum(G.mul(y, R), allAxes(y));
  g.output("loss", loss);
  G.grad(loss, xs).forEach((gx, i) => {
    g.output(`g${i}`, gx);
  });
  const session = await createSession(g, { device: "cpu" });
  const inputs = specs.map((s) => generate(r, G.numel(s.shape), s.gen));
  const feeds = (vals: number[][]): Record<string, HostTensor> =>
    Object.fromEntries(vals.map((v, i) => [`x${i}`, host(dtype, specs[i]?.shape as number[], v)]));
  const base = await session.run(feeds(inputs));
  const analytic = specs.map((_, i) => values(base[`g${i}`]));
  const lossAt = async (vals: number[][]) => values((await session.run(feeds(vals))).loss)[0] as number;
  for (let i = 0; i < specs.length; i++) {
    const n = inputs[i]?.length as number;
    const picks = Array.from({ length: n }, (_, k) => k);
    for (let k = picks.length - 1; k > 0; k--) {
      const j = Math.floor(r() * (k + 1));
      [picks[k], picks[j]] = [picks[j] as number, picks[k] as number];
    }
    const chosen = picks.slice(0, check.maxElems ?? 24);
    const fd: number[] = [];
    for (const k of chosen) {
      const plus = inputs.map((v) => [...v]);
      const minus = inputs.map((v) => [...v]);
      const v = inputs[i]?.[k] as number;
      (plus[i] as number[])[k] = v + check.h;
      (minus[i] as number[])[k] = v - check.h;
      fd.push(((await lossAt(plus)) - (await lossAt(minus))) / (2 * check.h));
    }
    const an = chosen.map((k) => analytic[i]?.[k] as number);
    expect(relError(an, fd, 1e-3), `input ${i} ${fmt(specs[i]?.shape)}`).toBeLessThan(check.tol);
  }
  await session.release();
  return { analytic, inputs, r: weights, y };
}

const fmt = (s: readonly number[] | undefined) => `[${s?.join(",")}]`;
/** A random dimension in [lo, hi]: shapes vary with the seed. */
const dim = (seed: number, lo = 1, hi = 4) => lo + Math.floor(rng(seed)() * (hi - lo + 1));

type Case = [string, Spec[], (g: Graph, xs: Tensor[]) => Tensor, Check?];
const x = (xs: Tensor[], i = 0) => xs[i] as Tensor;

const cases: Case[] = [
  [
    "add (broadcast both ways)",
    [{ shape: [dim(1), 1, 3] }, { shape: [dim(2, 2), 1] }],
    (_g, xs) => G.add(x(xs), x(xs, 1)),
  ],
  ["sub (broadcast)", [{ shape: [2, dim(3), 3] }, { shape: [3] }], (_g, xs) => G.sub(x(xs), x(xs, 1))],
  [
    "mul (broadcast, shared input)",
    [{ shape: [dim(4), 3] }, { shape: [1, 3] }],
    (_g, xs) => G.mul(G.mul(x(xs), x(xs, 1)), x(xs)),
  ],
  [
    "div (broadcast)",
    [{ shape: [2, dim(5)] }, { shape: [2, 1], gen: "positive" }],
    (_g, xs) => G.div(x(xs), x(xs, 1)),
  ],
  ["div by a tensor (scalar numerator)", [{ shape: [dim(6)], gen: "positive" }], (_g, xs) => G.div(1, x(xs))],
  ["neg", [{ shape: [dim(7), 2] }], (_g, xs) => G.neg(x(xs))],
  ["exp", [{ shape: [dim(8), 3] }], (_g, xs) => G.exp(x(xs))],
  ["log", [{ shape: [dim(9), 3], gen: "positive" }], (_g, xs) => G.log(x(xs))],
  ["sqrt", [{ shape: [dim(10), 3], gen: "positive" }], (_g, xs) => G.sqrt(x(xs))],
  ["pow 3", [{ shape: [dim(11), 3] }], (_g, xs) => G.pow(x(xs), 3)],
  [
    "pow 1 and pow 0 (constant) at zeros",
    [{ shape: [dim(47), 2] }],
    (_g, xs) => G.add(G.pow(x(xs), 1), G.pow(G.relu(x(xs)), 0)),
  ],
  ["pow 0.5", [{ shape: [dim(12), 3], gen: "positive" }], (_g, xs) => G.pow(x(xs), 0.5)],
  ["sigmoid", [{ shape: [dim(13), 3] }], (_g, xs) => G.sigmoid(x(xs))],
  ["tanh", [{ shape: [dim(14), 3] }], (_g, xs) => G.tanh(x(xs))],
  ["sin", [{ shape: [dim(15), 3] }], (_g, xs) => G.sin(x(xs))],
  ["cos", [{ shape: [dim(16), 3] }], (_g, xs) => G.cos(x(xs))],
  ["abs", [{ shape: [dim(17), 3], gen: "away0" }], (_g, xs) => G.abs(x(xs))],
  ["relu", [{ shape: [dim(18), 3], gen: "away0" }], (_g, xs) => G.relu(x(xs))],
  ["silu", [{ shape: [dim(19), 3] }], (_g, xs) => G.silu(x(xs))],
  ["quickGelu", [{ shape: [dim(20), 3] }], (_g, xs) => G.quickGelu(x(xs))],
  ["gelu tanh", [{ shape: [dim(21), 3] }], (_g, xs) => G.gelu(x(xs), "tanh")],
  [
    "gelu erf (float32: no float64 Erf kernel)",
    [{ shape: [dim(22), 3] }],
    (_g, xs) => G.gelu(x(xs)),
    F32_SMOOTH,
  ],
  [
    "matmul batched @ 2-D",
    [{ shape: [dim(23), 3, 4] }, { shape: [4, dim(24)] }],
    (_g, xs) => G.matmul(x(xs), x(xs, 1)),
  ],
  [
    "matmul broadcast batches",
    [{ shape: [2, 1, 3, 2] }, { shape: [dim(25, 2), 2, 3] }],
    (_g, xs) => G.matmul(x(xs), x(xs, 1)),
  ],
  [
    "linear with bias",
    [{ shape: [2, dim(26), 4] }, { shape: [3, 4] }, { shape: [3] }],
    (_g, xs) => G.linear(x(xs), x(xs, 1), x(xs, 2)),
  ],
  ["reduceSum (two axes)", [{ shape: [2, dim(27), 3] }], (_g, xs) => G.reduceSum(x(xs), [0, 2])],
  ["reduceMean keepdims", [{ shape: [dim(28), 4] }], (_g, xs) => G.reduceMean(x(xs), -1, true)],
  ["reduceMax", [{ shape: [dim(29), 5] }], (_g, xs) => G.reduceMax(x(xs), 1)],
  ["softmax (middle axis)", [{ shape: [2, dim(30, 2), 3] }], (_g, xs) => G.softmax(x(xs), 1)],
  [
    "layerNorm (x, gamma, beta)",
    [{ shape: [2, dim(31), 5] }, { shape: [5] }, { shape: [5] }],
    (_g, xs) => G.layerNorm(x(xs), x(xs, 1), x(xs, 2), 1e-5),
  ],
  [
    "groupNorm (x, gamma, beta)",
    [{ shape: [dim(32, 1, 2), 4, 2, 3] }, { shape: [4] }, { shape: [4] }],
    (_g, xs) => G.groupNorm(x(xs), 2, x(xs, 1), x(xs, 2), 1e-5),
  ],
  [
    "reshape + transpose",
    [{ shape: [2, 3, dim(33, 2)] }],
    (_g, xs) => G.transpose(G.reshape(x(xs), [3, 2, -1]), [2, 0, 1]),
  ],
  [
    "unsqueeze + squeeze",
    [{ shape: [dim(34), 3] }],
    (_g, xs) => G.squeeze(G.mul(G.unsqueeze(x(xs), [0, 2]), 2), 0),
  ],
  ["expand", [{ shape: [1, dim(35), 1] }], (_g, xs) => G.expand(x(xs), [3, x(xs).shape[1] as number, 2])],
  [
    "concat (an input used twice)",
    [{ shape: [2, 1, 3] }, { shape: [2, dim(36), 3] }],
    (_g, xs) => G.concat([x(xs), x(xs, 1), x(xs)], 1),
  ],
  [
    "split (one part unused)",
    [{ shape: [dim(37), 7] }],
    (_g, xs) => {
      const [a, , c] = G.split(x(xs), [2, 3, 2], 1) as [Tensor, Tensor, Tensor];
      return G.mul(a, c);
    },
  ],
  [
    "slice with steps and negative start",
    [{ shape: [5, 7] }],
    (_g, xs) => G.slice(x(xs), [-4, 1], [5, 6], [0, 1], [2, 3]),
  ],
  ["pad", [{ shape: [2, dim(38)] }], (_g, xs) => G.pad(x(xs), [1, 0, 0, 2], 0.5)],
  [
    "gather rows (repeated indices)",
    [{ shape: [5, dim(39)] }],
    (g, xs) => G.gather(x(xs), g.constant([4, 0, 4, 2, 1, 4], "int64", [2, 3]), 0),
  ],
  [
    "gather along a middle axis (negative indices)",
    [{ shape: [2, 4, dim(45)] }],
    (g, xs) => G.gather(x(xs), g.constant([-1, 0, 3, 1, -1], "int64", [5]), 1),
  ],
  [
    "upsampleNearest2d 2× ",
    [{ shape: [1, 2, 2, dim(40, 2)] }],
    (_g, xs) => G.upsampleNearest2d(x(xs), 4, 2 * (x(xs).shape[3] as number)),
  ],
  ["upsampleNearest2d odd size", [{ shape: [1, 1, 2, 3] }], (_g, xs) => G.upsampleNearest2d(x(xs), 3, 5)],
  [
    "where (condition from another input)",
    [{ shape: [dim(41), 3] }, { shape: [1, 3] }, { shape: [dim(41), 3] }],
    (_g, xs) => G.where(G.greater(x(xs, 2), 0), x(xs), x(xs, 1)),
  ],
  [
    "cast float64 → float32 → float64",
    [{ shape: [dim(42), 3] }],
    (_g, xs) => G.cast(G.cast(x(xs), "float32"), "float64"),
    { tol: 1e-4, h: 1e-2 },
  ],
  [
    "attention (cross, additive mask input)",
    [
      { shape: [2, 3, 4] },
      { shape: [2, dim(43, 2), 4] },
      { shape: [2, dim(43, 2), 6] },
      { shape: [1, 2, 3, dim(43, 2)] },
    ],
    (_g, xs) => G.attention(x(xs), x(xs, 1), x(xs, 2), { heads: 2, mask: x(xs, 3) }),
  ],
  [
    "attention (causal self)",
    [{ shape: [1, dim(44, 2, 4), 6] }],
    (_g, xs) =>
      G.attention(x(xs), x(xs), x(xs), { heads: 3, mask: G.causalMask(x(xs), x(xs).shape[1] as number) }),
  ],
  [
    "attention, backward in query chunks of 2 rows (mask rows sliced per chunk)",
    [
      { shape: [2, 5, 4] },
      { shape: [2, dim(47, 2), 4] },
      { shape: [2, dim(47, 2), 6] },
      { shape: [1, 2, 5, dim(47, 2)] },
    ],
    // 2 rows of [B=2, heads=2, S] float32 scores per chunk: 3 chunks for 5 query rows, the last short.
    (_g, xs) =>
      G.attention(x(xs), x(xs, 1), x(xs, 2), {
        heads: 2,
        mask: x(xs, 3),
        gradChunkBytes: 2 * 2 * 2 * (x(xs, 1).shape[1] as number) * 4,
      }),
  ],
  [
    "attention, backward in query chunks of 1 row (a mask broadcast over rows)",
    [{ shape: [1, 3, 4] }, { shape: [1, 4, 4] }, { shape: [1, 4, 4] }, { shape: [1, 1, 1, 4] }],
    (_g, xs) => G.attention(x(xs), x(xs, 1), x(xs, 2), { heads: 2, mask: x(xs, 3), gradChunkBytes: 1 }),
  ],
  [
    "attention map swap (probs of one pair applied to another's values)",
    [
      { shape: [1, 3, 4] },
      { shape: [1, 3, 4] },
      { shape: [1, dim(46, 2), 4] },
      { shape: [1, dim(46, 2), 4] },
    ],
    (_g, xs) => {
      const source = G.attentionProbs(x(xs), x(xs, 2), { heads: 2 });
      const target = G.attentionProbs(x(xs, 1), x(xs, 2), { heads: 2 });
      const mixed = G.add(G.mul(source, 0.7), G.mul(target, 0.3));
      return G.attendValues(mixed, x(xs, 3));
    },
  ],
  [
    "attention block: layer norm, q/k/v with a LoRA on q, attention, out proj, residual",
    [
      { shape: [1, 4, 6] }, // hidden states
      { shape: [1, 3, 5] }, // context (cross-attention), like the [B, 77, D] text embedding
      { shape: [6, 6] }, // to_q
      { shape: [2, 6] }, // lora down
      { shape: [6, 2] }, // lora up
    ],
    (g, xs) => {
      const h = x(xs);
      const n = G.layerNorm(
        h,
        g.constant(new Float64Array(6).fill(1.1), "float64", [6]),
        g.constant(new Float64Array(6).fill(0.1), "float64", [6]),
      );
      const q = G.add(G.linear(n, x(xs, 2)), G.mul(G.linear(G.linear(n, x(xs, 3)), x(xs, 4)), 0.5));
      const wk = g.constant(Float64Array.from(randn(rng(7), 30)), "float64", [6, 5]);
      const wv = g.constant(Float64Array.from(randn(rng(8), 30)), "float64", [6, 5]);
      const wo = g.constant(Float64Array.from(randn(rng(9), 36)), "float64", [6, 6]);
      const a = G.attention(q, G.linear(x(xs, 1), wk), G.linear(x(xs, 1), wv), { heads: 2 });
      return G.add(G.linear(a, wo, g.constant(new Float64Array(6).fill(0.2), "float64", [6])), h);
    },
  ],
];

describe("gradients match finite differences", () => {
  it.each(cases)("%s", async (_name, specs, f, check = F64) => {
    await gradcheck(cases.findIndex((c) => c[0] === _name) + 100, specs, f, check);
  });

  const geom = (seed: number): ConvGeom => {
    const r = rng(seed);
    const pick = (n: number) => 1 + Math.floor(r() * n);
    return {
      N: pick(2),
      C: 4,
      H: 4 + pick(3),
      W: 4 + pick(3),
      O: 6,
      KH: 3,
      KW: pick(3),
      stride: [pick(2), pick(2)],
      pads: [pick(2) - 1, pick(2) - 1, pick(2) - 1, pick(2) - 1],
      dilation: [1, pick(2)],
      groups: pick(2),
    };
  };

  // Random geometries, plus a dilated one: both input-gradient forms run (a stride-1 Conv with the flipped
  // kernel; ConvTranspose for strides, and for padding wider than the kernel's reach as in seed 13).
  const dilated: ConvGeom = { ...geom(12), stride: [1, 1], dilation: [2, 2], pads: [2, 1, 2, 1], groups: 2 };
  it.each([
    [11, geom(11)],
    [12, geom(12)],
    [13, geom(13)],
    [14, geom(14)],
    [15, dilated],
  ] as const)("conv2d (float32: no float64 Conv kernel) — geometry %i", async (seed, c) => {
    const { analytic, inputs, r } = await gradcheck(
      seed,
      [{ shape: [c.N, c.C, c.H, c.W] }, { shape: [c.O, c.C / c.groups, c.KH, c.KW] }, { shape: [c.O] }],
      (_g, xs) =>
        G.conv2d(x(xs), x(xs, 1), x(xs, 2), {
          stride: c.stride,
          padding: c.pads,
          dilation: c.dilation,
          groups: c.groups,
        }),
      F32_LINEAR,
    );
    // And against float64 loops: float32 accumulation over ≤ 36 terms stays within 1e-5 relative.
    const ref = refConv(inputs[0] as number[], inputs[1] as number[], c, r);
    const [OH, OW] = convOutSize(c);
    const gb = Array.from({ length: c.O }, (_, o) => {
      let s = 0;
      for (let n = 0; n < c.N; n++)
        for (let p = 0; p < OH * OW; p++) s += r[(n * c.O + o) * OH * OW + p] as number;
      return s;
    });
    expect(relError(analytic[0] as number[], ref.gx)).toBeLessThan(1e-5);
    expect(relError(analytic[1] as number[], ref.gw)).toBeLessThan(1e-5);
    expect(relError(analytic[2] as number[], gb)).toBeLessThan(1e-5);
  });

  it("convTranspose2d (float32: no float64 kernel)", async () => {
    await gradcheck(
      21,
      [{ shape: [1, 4, 3, 4] }, { shape: [4, 3, 3, 3] }, { shape: [6] }],
      (_g, xs) =>
        G.convTranspose2d(x(xs), x(xs, 1), x(xs, 2), { stride: 2, padding: 1, outputPadding: 1, groups: 2 }),
      F32_LINEAR,
    );
  });

  it("resnet block: group norm, silu, conv, group norm, silu, conv, 1×1 skip (float32)", async () => {
    const r = rng(31);
    const p = (g: Graph, shape: number[], scale = 0.3) =>
      g.constant(Float32Array.from(randn(r, G.numel(shape)).map((v) => v * scale)), "float32", shape);
    await gradcheck(
      32,
      [{ shape: [1, 4, 5, 5] }, { shape: [6, 4, 3, 3] }],
      (g, xs) => {
        const h0 = G.silu(G.groupNorm(x(xs), 2, p(g, [4], 1), p(g, [4]), 1e-5));
        const h1 = G.conv2d(h0, x(xs, 1), p(g, [6]), { padding: 1 });
        const h2 = G.silu(G.groupNorm(h1, 2, p(g, [6], 1), p(g, [6]), 1e-5));
        const h3 = G.conv2d(h2, p(g, [6, 6, 3, 3]), p(g, [6]), { padding: 1 });
        return G.add(G.conv2d(x(xs), p(g, [6, 4, 1, 1]), null), h3);
      },
      { ...F32_SMOOTH, maxElems: 16 },
    );
  });
});
