/**
 * A learned concept as a file (state-file.ts: safetensors, the concept's JSON in `__metadata__`, LoRA
 * named as diffusers saves it, the token's learned embedding as `token_embedding` [D]): ≈ 3 MB for SD 1.5
 * at rank 4, round-tripping bit for bit, refused with a clear message when damaged or foreign.
 */
import { z } from "zod";
import { UserFacingError } from "../../errors.js";
import type { ConceptOptions } from "../../spec/swap.js";
import type { Concept } from "./concept.js";
import {
  decodeStateFile,
  encodeStateFile,
  loraFromTensors,
  loraTensors,
  requireTensor,
} from "./state-file.js";

const META_KEY = "photoswap_concept";
const FORMAT = "photoswap-concept";
const VERSION = 1;

const metadataSchema = z.object({
  format: z.literal(FORMAT),
  version: z.literal(VERSION),
  modelId: z.string(),
  token: z.string().min(1),
  tokenId: z.number().int().nonnegative(),
  subject: z.string().min(1),
  contextDim: z.number().int().positive(),
  references: z.number().int().positive(),
  options: z.custom<ConceptOptions>((v) => typeof v === "object" && v !== null),
  loraAlpha: z.number().positive().nullable(),
  seconds: z.object({ classImages: z.number(), encode: z.number(), train: z.number() }).optional(),
});

export function serializeConcept(c: Concept): Uint8Array {
  if (c.embedding && c.embedding.length !== c.contextDim) {
    throw new Error(
      `serializeConcept: the embedding has ${c.embedding.length} values, contextDim is ${c.contextDim}`,
    );
  }
  const lora = loraTensors(c.lora);
  const meta: z.infer<typeof metadataSchema> = {
    format: FORMAT,
    version: VERSION,
    modelId: c.modelId,
    token: c.token,
    tokenId: c.tokenId,
    subject: c.subject,
    contextDim: c.contextDim,
    references: c.references,
    options: c.options,
    loraAlpha: lora.alpha,
    ...(c.seconds ? { seconds: c.seconds } : {}),
  };
  return encodeStateFile(
    [
      { name: "loss", shape: [c.losses.length], data: Float32Array.from(c.losses) },
      ...(c.embedding ? [{ name: "token_embedding", shape: [c.contextDim], data: c.embedding }] : []),
      ...lora.tensors,
    ],
    META_KEY,
    meta,
  );
}

function bad(problem: string): never {
  throw new UserFacingError(`not a usable concept file: ${problem}`);
}

export function deserializeConcept(bytes: Uint8Array): Concept {
  const file = decodeStateFile(bytes, META_KEY, "concept", bad, metadataSchema);
  const m = file.meta;
  for (const [name, t] of file.tensors) if (t.dtype !== "F32") bad(`tensor ${name} is ${t.dtype}`);
  const lora = loraFromTensors(file.tensors, m.loraAlpha, bad);
  const embedding = file.tensors.has("token_embedding")
    ? requireTensor(file.tensors, "token_embedding", bad, [m.contextDim]).data
    : undefined;
  return {
    token: m.token,
    tokenId: m.tokenId,
    subject: m.subject,
    ...(embedding ? { embedding } : {}),
    ...(lora ? { lora } : {}),
    modelId: m.modelId,
    contextDim: m.contextDim,
    options: m.options,
    references: m.references,
    losses: Array.from(requireTensor(file.tensors, "loss", bad).data),
    ...(m.seconds ? { seconds: m.seconds } : {}),
  };
}
