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
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    t = performance.now();
    await session.run(feeds);
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
