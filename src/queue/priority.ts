// Job order in the one queue. BullMQ takes the lowest priority number first (FIFO within a number).
// Each job type has its own band of 32 numbers, short jobs (sampling) before long ones (training);
// within a band a user's n-th waiting job gets band + n, so one user's burst waits behind everyone
// else's earlier jobs (fair share) instead of in front of them.
import type { JobName } from "./jobs.js";

/** Band order: renders (seconds) first, then swaps, then Imagic training, then concept learning (minutes). */
const BANDS: Record<JobName, number> = {
  "imagic.render": 0,
  "swap.edit": 1,
  "imagic.train": 2,
  "swap.concept": 3,
};

const TIERS = 32;

export function priorityFor(name: JobName, waitingOfUser: number): number {
  return 1 + BANDS[name] * TIERS + Math.min(Math.max(0, waitingOfUser), TIERS - 1);
}

/**
 * The band's score range in BullMQ's prioritized sorted set (score = priority · 2³² + counter), for
 * counting the jobs of one type ahead of another job with ZCOUNT.
 */
export function bandScores(name: JobName): { min: number; max: number } {
  const first = 1 + BANDS[name] * TIERS;
  return { min: first * 2 ** 32, max: (first + TIERS) * 2 ** 32 };
}
