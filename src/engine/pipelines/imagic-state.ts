import { z } from "zod";
import { UserFacingError } from "../../errors.js";
import type { ImagicOptions } from "../../spec/imagic.js";
import type { Box, Size } from "../../spec/shape.js";
import { f32ToF16 } from "../graph/dtype.js";
import type { UnetWeights } from "../models/finetune.js";
import type { LoraWeights } from "../models/lora.js";
import {
  decodeStateFile,
  encodeStateFile,
  loraFromTensors,
  loraTensors,
  requireTensor,
  type StateTensor,
} from "./state-file.js";

/**
 * What Imagic's training produces and a later render needs: the two embeddings, the LoRA adapters,
 * the settings, and the model and image size they belong to. Serialized as a safetensors file (the
 * state's JSON in `__metadata__`, LoRA tensors named as diffusers saves them: `unet.<module>.lora_A.weight`
 * [rank, in] and `lora_B.weight` [out, rank]), so a cached state is a few MB and readable by other tools.
 * A full fine-tune's state holds, instead of LoRA, the change of every UNet tensor it changed
 * (`unet_delta.<parameter name>`, F16: trained − checkpoint, rounded to fp16): half the bytes of the
 * weights it touched, still ≈ 1.7 GB for every weight of SD 1.5 — too big for the queue's Redis blobs
 * at their default limit (`checkStateFits`).
 */

export interface ImagicState {
  modelId: string;
  prompt: string;
  /** The working size the state was trained at, in pixels (renders run at this size). */
  width: number;
  height: number;
  /**
   * Where the photo sits in the working image (src/spec/shape.ts): renders are cropped to it, so they
   * have the photo's aspect ratio; all of the working image for a photo that needed no padding.
   */
  content: Box;
  /** The photo's own size (before resizing to the working size), for results upscaled back to it. */
  source?: Size;
  options: ImagicOptions;
  /** [77, D] each: CLIP(target prompt), and the embedding optimized to reconstruct the photo. */
  contextShape: [number, number];
  eTgt: Float32Array;
  eOpt: Float32Array;
  /** Absent when the fine-tune stage ran 0 steps or fine-tuned the UNet's own weights. */
  lora: LoraWeights | null;
  /**
   * A full fine-tune: fine-tuned − checkpoint weights, by name, for the tensors that changed, with values
   * that are exactly representable in fp16 (as stored).
   */
  unetDelta?: UnetWeights;
  /** Per-step losses of each stage (shorter than the configured steps when early stopping fired). */
  losses: { embedding: number[]; finetune: number[] };
  /** Wall time of each training stage. */
  seconds?: { encode: number; embedding: number; finetune: number };
}

const FORMAT = "imagic-state";
const VERSION = 1;

const metadataSchema = z.object({
  format: z.literal(FORMAT),
  version: z.literal(VERSION),
  modelId: z.string(),
  prompt: z.string(),
  width: z.number().int().positive(),
  height: z.number().int().positive(),
  /** Absent in states written before non-square photos: all of the working image. */
  content: z
    .object({
      left: z.number().int().nonnegative(),
      top: z.number().int().nonnegative(),
      width: z.number().int().positive(),
      height: z.number().int().positive(),
    })
    .optional(),
  source: z.object({ width: z.number().int().positive(), height: z.number().int().positive() }).optional(),
  contextShape: z.tuple([z.number().int().positive(), z.number().int().positive()]),
  options: z.custom<ImagicOptions>((v) => typeof v === "object" && v !== null),
  /** Shared by every adapter (null without LoRA); ranks and sizes come from the tensors' shapes. */
  loraAlpha: z.number().positive().nullable(),
  seconds: z.object({ encode: z.number(), embedding: z.number(), finetune: z.number() }).optional(),
});

const META_KEY = "imagic";
const DELTA_PREFIX = "unet_delta.";

function tensors(state: ImagicState, lora: StateTensor[]): StateTensor[] {
  const list: StateTensor[] = [
    { name: "e_tgt", shape: [...state.contextShape], data: state.eTgt },
    { name: "e_opt", shape: [...state.contextShape], data: state.eOpt },
    {
      name: "loss.embedding",
      shape: [state.losses.embedding.length],
      data: Float32Array.from(state.losses.embedding),
    },
    {
      name: "loss.finetune",
      shape: [state.losses.finetune.length],
      data: Float32Array.from(state.losses.finetune),
    },
    ...lora,
  ];
  for (const [name, d] of state.unetDelta ?? []) {
    list.push({ name: `${DELTA_PREFIX}${name}`, shape: [d.length], data: f32ToF16(d) });
  }
  return list;
}

export function serializeState(state: ImagicState): Uint8Array {
  const lora = loraTensors(state.lora);
  const meta = {
    format: FORMAT,
    version: VERSION,
    modelId: state.modelId,
    prompt: state.prompt,
    width: state.width,
    height: state.height,
    content: state.content,
    source: state.source,
    contextShape: state.contextShape,
    options: state.options,
    loraAlpha: lora.alpha,
    seconds: state.seconds,
  };
  return encodeStateFile(tensors(state, lora.tensors), META_KEY, meta);
}

function bad(problem: string): never {
  throw new UserFacingError(`not a usable Imagic state: ${problem}`);
}

export function deserializeState(bytes: Uint8Array): ImagicState {
  const file = decodeStateFile(bytes, META_KEY, "Imagic", bad, metadataSchema);
  const m = file.meta;
  for (const [name, t] of file.tensors) {
    if ((t.dtype === "F16") !== name.startsWith(DELTA_PREFIX)) bad(`tensor ${name} is ${t.dtype}`);
  }
  const need = (name: string, shape?: readonly number[]) => requireTensor(file.tensors, name, bad, shape);
  const lora = loraFromTensors(file.tensors, m.loraAlpha, bad);
  let unetDelta: UnetWeights | undefined;
  for (const [name, t] of file.tensors) {
    if (!name.startsWith(DELTA_PREFIX)) continue;
    unetDelta ??= new Map();
    unetDelta.set(name.slice(DELTA_PREFIX.length), t.data);
  }
  if (unetDelta && lora) bad("it holds both LoRA adapters and a UNet delta");
  const content = m.content ?? { left: 0, top: 0, width: m.width, height: m.height };
  if (content.left + content.width > m.width || content.top + content.height > m.height)
    bad(`its photo box ${JSON.stringify(content)} is outside its ${m.width}×${m.height} working size`);
  return {
    modelId: m.modelId,
    prompt: m.prompt,
    width: m.width,
    height: m.height,
    content,
    ...(m.source ? { source: m.source } : {}),
    options: m.options,
    contextShape: m.contextShape,
    eTgt: need("e_tgt", m.contextShape).data,
    eOpt: need("e_opt", m.contextShape).data,
    lora,
    ...(unetDelta ? { unetDelta } : {}),
    losses: {
      embedding: Array.from(need("loss.embedding").data),
      finetune: Array.from(need("loss.finetune").data),
    },
    ...(m.seconds ? { seconds: m.seconds } : {}),
  };
}

/**
 * Refuses a serialized state larger than the blob store takes (BLOB_MAX_BYTES: blobs live in Redis),
 * saying why it is big and what to do: a full fine-tune of every SD 1.5 weight is ≈ 1.7 GB of fp16
 * deltas, a LoRA state ≈ 13 MiB.
 */
export function checkStateFits(state: ImagicState, bytes: number, maxBytes: number): void {
  if (bytes <= maxBytes) return;
  const mib = (n: number) => `${(n / 1024 ** 2).toFixed(1)} MiB`;
  const what = state.unetDelta
    ? `a full fine-tune (fp16 changes of ${state.unetDelta.size} UNet tensors)`
    : "its embeddings and LoRA adapters";
  throw new UserFacingError(
    `the fine-tuned Imagic state is ${mib(bytes)}, holding ${what}; the queue keeps states in Redis, ` +
      `limited to ${mib(maxBytes)} per blob (BLOB_MAX_BYTES): fine-tune with LoRA (the default) or only ` +
      "the attention weights, or raise BLOB_MAX_BYTES (Redis must hold it in memory)",
  );
}
