// Learned-concept cache: a Photoswap concept learned from a set of reference photos is reused by
// every later swap of the same subject with the same references, settings and model.
import type { Redis } from "ioredis";
import { conceptCacheKey, requestedConceptOptions } from "../spec/swap.js";
import type { JobPayload } from "./jobs.js";
import type { QueueKeys } from "./keys.js";

type ConceptSpec = Pick<JobPayload<"swap.concept">, "referenceBlobIds" | "subject" | "options">;

/**
 * The engine's cache key (spec/swap.ts): blob ids are the sha256 of the photos' bytes, the content hashes
 * the engine keys references by; the request's options resolved as the engine resolves them; the model.
 */
function conceptKey(spec: ConceptSpec, modelId: string): string {
  return conceptCacheKey({
    references: spec.referenceBlobIds,
    subject: spec.subject,
    options: requestedConceptOptions(spec.options),
    modelId,
  });
}

export async function cachedConcept(
  redis: Redis,
  keys: QueueKeys,
  spec: ConceptSpec,
  modelId: string,
): Promise<string | undefined> {
  return (await redis.get(keys.concept(conceptKey(spec, modelId)))) ?? undefined;
}

export async function cacheConcept(
  redis: Redis,
  keys: QueueKeys,
  spec: ConceptSpec,
  modelId: string,
  blobId: string,
  ttlSeconds: number,
): Promise<void> {
  await redis.set(keys.concept(conceptKey(spec, modelId)), blobId, "EX", ttlSeconds);
}
