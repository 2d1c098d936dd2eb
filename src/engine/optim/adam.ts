/**
 * Adam (Kingma & Ba, 2015) over plain Float32Arrays, updated in place, as torch.optim.Adam computes it:
 * m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
 * The optimizer runs on the host because the engine's graphs are stateless: a step's gradients come back
 * from onnxruntime and the updated parameters go into the next step's feeds.
 */
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
