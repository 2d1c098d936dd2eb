// Learned-concept cache: a Photoswap concept learned from a set of reference photos is reused by
// every later swap of the same subject with the same references and options.
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import type { JobPayload } from "./jobs.js";
import type { QueueKeys } from "./keys.js";

type ConceptSpec = Pick<JobPayload<"swap.concept">, "referenceBlobIds" | "subject" | "options">;

/** The cache key: references as a set (order does not change what is learned), subject, options. */
function conceptKey(spec: ConceptSpec): string {
  const canonical = JSON.stringify({
    references: [...spec.referenceBlobIds].sort(),
    subject: spec.subject,
    steps: spec.options.steps ?? null,
    seed: spec.options.seed,
  });
  return createHash("sha256").update(canonical).digest("hex");
}

export async function cachedConcept(
  redis: Redis,
  keys: QueueKeys,
  spec: ConceptSpec,
): Promise<string | undefined> {
  return (await redis.get(keys.concept(conceptKey(spec)))) ?? undefined;
}

export async function cacheConcept(
  redis: Redis,
  keys: QueueKeys,
  spec: ConceptSpec,
  blobId: string,
  ttlSeconds: number,
): Promise<void> {
  await redis.set(keys.concept(conceptKey(spec)), blobId, "EX", ttlSeconds);
}
