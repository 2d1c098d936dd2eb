import type { HostTensor, Session } from "../../engine/runtime/index.js";
import { type ProfileRow, summarizeProfile } from "../../engine/runtime/index.js";

export interface SessionTimings {
  /** The first run: kernels compiled and buffers allocated, so it is reported apart. */
  firstRunMs: number;
  medianMs: number;
  minMs: number;
  runs: number;
  /** With profiling on: kernel time per op type and provider, per run (the first run included). */
  profile?: ProfileRow[];
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Runs a session once and then `runs` timed times on the same feeds, ends its profile and releases it. */
export async function timeSession(
  session: Session,
  feeds: Record<string, HostTensor>,
  runs: number,
): Promise<SessionTimings> {
  let t = performance.now();
  await session.run(feeds);
  const firstRunMs = performance.now() - t;
  // A graph with carried inputs (a training step with Adam inside) goes on from its last run, as in training.
  const next = session.carried.length > 0 ? ({ carry: "continue" } as const) : undefined;
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    t = performance.now();
    await session.run(feeds, next);
    times.push(performance.now() - t);
  }
  const profileFile = session.endProfiling();
  await session.release();
  const timings: SessionTimings = {
    firstRunMs,
    medianMs: median(times),
    minMs: Math.min(...times),
    runs: times.length,
  };
  if (profileFile) {
    timings.profile = summarizeProfile(profileFile).map((p) => ({ ...p, ms: p.ms / (runs + 1) }));
  }
  return timings;
}

/** Step timestamps of one stage, from progress events. */
export class StageClock {
  private readonly stamps = new Map<string, number[]>();
  private readonly starts = new Map<string, number>();
  /** Records a step's end; a preview event repeats its batch's last step and is not one. */
  mark(p: { stage: string; preview?: unknown }): void {
    if (p.preview) return;
    const now = performance.now();
    const list = this.stamps.get(p.stage) ?? [];
    if (list.length === 0 && !this.starts.has(p.stage)) this.starts.set(p.stage, now);
    list.push(now);
    this.stamps.set(p.stage, list);
  }
  begin(stage: string): void {
    this.starts.set(stage, performance.now());
  }
  /** First step (ms, from the stage's start) and the median of the later steps (ms). */
  steps(stage: string): { first: number; median: number; ran: number } | undefined {
    const list = this.stamps.get(stage);
    const start = this.starts.get(stage);
    if (!list || list.length === 0 || start === undefined) return undefined;
    const gaps = list.slice(1).map((t, i) => t - (list[i] as number));
    const sorted = [...gaps].sort((a, b) => a - b);
    const first = (list[0] as number) - start;
    return {
      first,
      median: sorted.length ? (sorted[Math.floor(sorted.length / 2)] as number) : first,
      ran: list.length,
    };
  }
  /**
   * The stage at its full step count from a scaled run: cold = first step (session build and warm-up)
   * + (steps − 1) × the median; warm = steps × the median. All zero for a stage that did not run.
   */
  extrapolate(stage: string, fullSteps: number): StageTimes {
    const s = this.steps(stage);
    if (!s || fullSteps === 0) return { cold: 0, warm: 0, perStep: 0, first: 0, ran: 0 };
    return {
      cold: s.first + (fullSteps - 1) * s.median,
      warm: fullSteps * s.median,
      perStep: s.median,
      first: s.first,
      ran: s.ran,
    };
  }
}

/** A stage's extrapolated times (ms) and how many of its steps ran. */
export interface StageTimes {
  cold: number;
  warm: number;
  perStep: number;
  first: number;
  ran: number;
}

/** A stage's steps scaled down for a quick run: at least 5 (or all, when fewer), none when it has none. */
export const scaled = (steps: number, scale: number) =>
  steps === 0 ? 0 : Math.min(steps, Math.max(5, Math.round(steps * scale)));

/** A synthetic photo [1, 3, height, width] in [-1, 1] (random weights: any image costs the same). */
export function photo(width: number, height = width): Float32Array {
  const img = new Float32Array(3 * width * height);
  for (let i = 0; i < img.length; i++) img[i] = Math.sin(i / 97) * 0.8;
  return img;
}
