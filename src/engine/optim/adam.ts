/**
 * Adam (Kingma & Ba, 2015) over plain Float32Arrays, updated in place, as torch.optim.Adam computes it:
 * m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
 * The host form serves small parameters (a text embedding, a token's row); the trained tensors of the UNet
 * (LoRA, fine-tuned weights) are updated inside their training graph instead (`adamUpdate`), so that their
 * values and Adam's state can stay on the device from step to step (runtime/session.ts, "carried inputs").
 */

import type { Tensor } from "../graph/graph.js";
import { add, div, mul, slice, sqrt, sub } from "../graph/ops.js";

export interface AdamOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export class Adam {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private t = 0;

  constructor(
    private readonly params: readonly Float32Array[],
    opts: AdamOptions,
  ) {
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    if (!(this.lr > 0) || !Number.isFinite(this.lr))
      throw new RangeError(`Adam: lr must be > 0, got ${opts.lr}`);
    for (const [name, b] of [
      ["beta1", this.beta1],
      ["beta2", this.beta2],
    ] as const) {
      if (!(b >= 0 && b < 1)) throw new RangeError(`Adam: ${name} must be in [0, 1), got ${b}`);
    }
    this.m = params.map((p) => new Float32Array(p.length));
    this.v = params.map((p) => new Float32Array(p.length));
  }

  /** Steps taken so far (the t of the bias correction). */
  get steps(): number {
    return this.t;
  }

  /** One update of every parameter with its gradient (same order and lengths as the constructor's params). */
  step(grads: readonly Float32Array[]): void {
    if (grads.length !== this.params.length) {
      throw new RangeError(`Adam.step: ${grads.length} gradients for ${this.params.length} parameters`);
    }
    this.t++;
    const { beta1, beta2, eps } = this;
    const stepSize = this.lr / (1 - beta1 ** this.t);
    const sqrtBc2 = Math.sqrt(1 - beta2 ** this.t);
    for (let k = 0; k < this.params.length; k++) {
      const p = this.params[k] as Float32Array;
      const g = grads[k] as Float32Array;
      const m = this.m[k] as Float32Array;
      const v = this.v[k] as Float32Array;
      if (g.length !== p.length) {
        throw new RangeError(`Adam.step: gradient ${k} has ${g.length} values, its parameter ${p.length}`);
      }
      for (let i = 0; i < p.length; i++) {
        const gi = g[i] as number;
        const mi = beta1 * (m[i] as number) + (1 - beta1) * gi;
        const vi = beta2 * (v[i] as number) + (1 - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = (p[i] as number) - (stepSize * mi) / (Math.sqrt(vi) / sqrtBc2 + eps);
      }
    }
  }
}

/**
 * Adam's update at step t as torch.optim.Adam computes it on a float32 tensor, its scalars as numbers a graph
 * takes as an input (`adamUpdate`), so one graph serves every step:
 *   m ← m + w·(g − m)            exp_avg.lerp_(g, 1 − β₁)
 *   v ← β₂·v + ((1 − β₂)·g)·g    exp_avg_sq.mul_(β₂).addcmul_(g, g, value=1 − β₂)
 *   p ← p − s·(m / (√v / r + ε))  p.addcdiv_(exp_avg, exp_avg_sq.sqrt() / r + ε, value=−s)
 * with w = 1 − β₁, s = lr/(1 − β₁ᵗ), r = √(1 − β₂ᵗ): [w, β₂, 1 − β₂, s, r, ε].
 */
export function adamCoefficients(opts: AdamOptions, t: number): Float32Array {
  const beta1 = opts.beta1 ?? 0.9;
  const beta2 = opts.beta2 ?? 0.999;
  return Float32Array.of(
    1 - beta1,
    beta2,
    1 - beta2,
    opts.lr / (1 - beta1 ** t),
    Math.sqrt(1 - beta2 ** t),
    opts.eps ?? 1e-8,
  );
}

/** How many numbers `adamCoefficients` gives. */
export const ADAM_COEFFICIENTS = 6;

/** Coefficients of an update that leaves p, m and v exactly as they are (w = 0, β₂ = 1, s = 0). */
export const ADAM_HOLD = Float32Array.of(0, 1, 0, 0, 1, 1);

/** Adam's state of a trained tensor in a graph, and its next values. */
export interface AdamTensors {
  p: Tensor;
  m: Tensor;
  v: Tensor;
}

/** One Adam update of (p, m, v) with gradient g, in the graph (float32), as `adamCoefficients` says. */
export function adamUpdate(s: AdamTensors, g: Tensor, coefficients: Tensor): AdamTensors {
  if (coefficients.shape.join() !== String(ADAM_COEFFICIENTS))
    throw new Error(`Adam coefficients must be [${ADAM_COEFFICIENTS}], got [${coefficients.shape}]`);
  const [w, beta2, c2, step, r, eps] = Array.from({ length: ADAM_COEFFICIENTS }, (_, i) =>
    slice(coefficients, [i], [i + 1]),
  ) as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
  const m = add(s.m, mul(w, sub(g, s.m)));
  const v = add(mul(beta2, s.v), mul(mul(c2, g), g));
  const p = sub(s.p, mul(step, div(m, add(div(sqrt(v), r), eps))));
  return { p, m, v };
}
