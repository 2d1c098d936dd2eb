/**
 * Early stopping on a flat loss. A diffusion loss is very noisy from step to step (each step draws its own
 * timesteps and noise), so the decision is made on an exponential moving average of it: training stops
 * once the EMA has not improved on its best value by `minRelImprovement` for `patience` steps, and never
 * before `minSteps`.
 */
export interface PlateauOptions {
  /** EMA decay per step (0.9 ≈ an average over the last 10 steps). */
  beta: number;
  /** Steps without enough improvement before stopping. */
  patience: number;
  /** Relative improvement of the EMA over its best value that counts as progress (0.01 = 1 %). */
  minRelImprovement: number;
  /** Never stop before this many steps. */
  minSteps: number;
}

export class LossPlateau {
  private ema = 0;
  private n = 0;
  private best = Number.POSITIVE_INFINITY;
  private bestStep = 0;

  constructor(private readonly opts: PlateauOptions) {
    if (!(opts.beta >= 0 && opts.beta < 1))
      throw new RangeError(`plateau beta must be in [0, 1), got ${opts.beta}`);
    if (!(opts.patience >= 1)) throw new RangeError(`plateau patience must be ≥ 1, got ${opts.patience}`);
  }

  /** The bias-corrected EMA of the losses seen so far (NaN before the first). */
  get average(): number {
    return this.n === 0 ? Number.NaN : this.ema / (1 - this.opts.beta ** this.n);
  }

  /** Record one step's loss; true when training should stop now. */
  update(loss: number): boolean {
    this.n++;
    this.ema = this.opts.beta * this.ema + (1 - this.opts.beta) * loss;
    const avg = this.average;
    if (avg < this.best * (1 - this.opts.minRelImprovement)) {
      this.best = avg;
      this.bestStep = this.n;
    }
    return this.n >= this.opts.minSteps && this.n - this.bestStep >= this.opts.patience;
  }
}
