/**
 * Remaining-time estimates for multi-stage runs (train embedding → fine-tune → render). Each stage's
 * seconds per step are an EMA of its measured step times, leaving out its first step (which pays for
 * session creation and warm-up). Stages not yet started are estimated from the current stage's rate
 * times their relative cost per step (`weight`), then corrected as soon as they run.
 */
export interface StagePlan {
  stage: string;
  steps: number;
  /** Cost of one step relative to the other stages' (e.g. a CFG forward pass ≈ 1/3 of a training step). */
  weight: number;
}

interface StageTiming {
  plan: StagePlan;
  rate?: number;
  last?: number;
  done: number;
}

export class EtaTracker {
  private readonly stages: StageTiming[];

  constructor(
    plan: readonly StagePlan[],
    private readonly now: () => number = () => performance.now() / 1000,
    private readonly beta = 0.8,
  ) {
    this.stages = plan.map((p) => ({ plan: { ...p }, done: 0 }));
  }

  private get(stage: string): StageTiming {
    const s = this.stages.find((x) => x.plan.stage === stage);
    if (!s) throw new Error(`EtaTracker: unknown stage "${stage}"`);
    return s;
  }

  /** Call right before a stage's first step. */
  begin(stage: string): void {
    this.get(stage).last = this.now();
  }

  /** Call after each completed step (1-based); returns the estimated seconds left in the whole run. */
  step(stage: string, step: number): number | undefined {
    const s = this.get(stage);
    const t = this.now();
    if (s.last !== undefined && step > 1) {
      const dt = t - s.last;
      s.rate = s.rate === undefined ? dt : this.beta * s.rate + (1 - this.beta) * dt;
    } else if (s.last !== undefined && s.rate === undefined && s.plan.steps === 1) {
      s.rate = t - s.last;
    }
    s.last = t;
    s.done = step;
    return this.remaining(stage);
  }

  /** A stage ended early (early stopping) or was skipped: its remaining steps no longer count. */
  finish(stage: string): void {
    const s = this.get(stage);
    s.plan.steps = s.done;
  }

  private remaining(current: string): number | undefined {
    const cur = this.get(current);
    const unit = cur.rate === undefined ? undefined : cur.rate / cur.plan.weight;
    let total = 0;
    for (const s of this.stages) {
      const left = s.plan.steps - s.done;
      if (left <= 0) continue;
      const rate = s.rate ?? (unit === undefined ? undefined : unit * s.plan.weight);
      if (rate === undefined) return undefined;
      total += left * rate;
    }
    return total;
  }
}

/** "1 h 02 min", "3 min 05 s", "12 s" — for progress lines. */
export function formatSeconds(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}
