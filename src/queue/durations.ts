// Recent job durations per job type: the worker records them, the client turns them into ETAs.
import type { Redis } from "ioredis";
import { JOB_NAMES, type JobName } from "./jobs.js";
import type { QueueKeys } from "./keys.js";

/** How many recent durations per type an estimate averages. */
const WINDOW = 20;

/** Guesses used until a type has run once on this queue (seconds, on a GPU). */
const FIRST_GUESS: Record<JobName, number> = {
  "imagic.train": 300,
  "imagic.render": 20,
  "swap.concept": 600,
  "swap.edit": 60,
};

export async function recordDuration(
  redis: Redis,
  keys: QueueKeys,
  name: JobName,
  seconds: number,
): Promise<void> {
  await redis
    .multi()
    .lpush(keys.durations(name), seconds.toFixed(3))
    .ltrim(keys.durations(name), 0, WINDOW - 1)
    .exec();
}

/** Mean of the recent durations of every job type (first guesses where none ran yet). */
export async function typicalDurations(redis: Redis, keys: QueueKeys): Promise<Record<JobName, number>> {
  const pipeline = redis.pipeline();
  for (const name of JOB_NAMES) pipeline.lrange(keys.durations(name), 0, WINDOW - 1);
  const replies = (await pipeline.exec()) ?? [];
  const out = { ...FIRST_GUESS };
  JOB_NAMES.forEach((name, i) => {
    const values = ((replies[i]?.[1] as string[] | undefined) ?? []).map(Number);
    if (values.length > 0) out[name] = values.reduce((a, b) => a + b, 0) / values.length;
  });
  return out;
}
