import { z } from "zod";
import { UserFacingError } from "../../errors.js";
import type { ImagicOptions } from "../../spec/imagic.js";
import type { Box, Size } from "../../spec/shape.js";
import { f16ToF32, f32ToF16 } from "../graph/dtype.js";
import type { UnetWeights } from "../models/finetune.js";
import type { LoraWeights } from "../models/lora.js";

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

const tensorSchema = z.object({
  dtype: z.enum(["F32", "F16"]),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});

interface Entry {
  name: string;
  shape: number[];
  /** Float16 entries are bits (the UNet delta); everything else float32. */
  data: Float32Array | Uint16Array;
}

const LORA_PREFIX = "unet.";
const LORA_A = ".lora_A.weight";
const LORA_B = ".lora_B.weight";
const DELTA_PREFIX = "unet_delta.";

function entries(state: ImagicState): Entry[] {
  const list: Entry[] = [
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
  ];
  for (const [module, a] of state.lora ?? []) {
    list.push({ name: `${LORA_PREFIX}${module}${LORA_A}`, shape: [a.rank, a.inF], data: a.down });
    list.push({ name: `${LORA_PREFIX}${module}${LORA_B}`, shape: [a.outF, a.rank], data: a.up });
  }
  for (const [name, d] of state.unetDelta ?? []) {
    list.push({ name: `${DELTA_PREFIX}${name}`, shape: [d.length], data: f32ToF16(d) });
  }
  return list;
}

export function serializeState(state: ImagicState): Uint8Array {
  const list = entries(state);
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const e of list) {
    const expected = e.shape.reduce((x, y) => x * y, 1);
    if (e.data.length !== expected) {
      throw new Error(`serializeState: ${e.name} has ${e.data.length} values for shape [${e.shape}]`);
    }
    const dtype = e.data instanceof Uint16Array ? "F16" : "F32";
    header[e.name] = { dtype, shape: e.shape, data_offsets: [offset, offset + e.data.byteLength] };
    offset += e.data.byteLength;
  }
  const alphas = new Set([...(state.lora?.values() ?? [])].map((a) => a.alpha));
  if (alphas.size > 1)
    throw new Error(`serializeState: LoRA adapters with different alphas (${[...alphas]})`);
  const loraAlpha = alphas.size === 1 ? ([...alphas][0] as number) : null;
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
    loraAlpha,
    seconds: state.seconds,
  };
  // safetensors: metadata values are strings; the header is padded with spaces to 8-byte alignment.
  header.__metadata__ = { imagic: JSON.stringify(meta) };
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length)
    json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(padded - json.length));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const e of list) {
    out.set(new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength), at);
    at += e.data.byteLength;
  }
  return out;
}

function bad(problem: string): never {
  throw new UserFacingError(`not a usable Imagic state: ${problem}`);
}

export function deserializeState(bytes: Uint8Array): ImagicState {
  if (bytes.length < 8) bad(`${bytes.length} bytes is too short`);
  const headerLen = Number(
    new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true),
  );
  if (headerLen > bytes.length - 8) bad(`header length ${headerLen} exceeds the ${bytes.length} bytes`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  } catch {
    return bad("the header is not JSON");
  }
  const metaText = (header.__metadata__ as { imagic?: unknown } | undefined)?.imagic;
  if (typeof metaText !== "string") bad("no Imagic metadata (is this a safetensors file from elsewhere?)");
  const meta = metadataSchema.safeParse(JSON.parse(metaText));
  if (!meta.success)
    bad(`metadata: ${meta.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  const dataStart = 8 + headerLen;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const t = tensorSchema.safeParse(info);
    if (!t.success)
      bad(`tensor ${name}: ${t.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
    const [begin, end] = t.data.data_offsets;
    const count = t.data.shape.reduce((x, y) => x * y, 1);
    const f16 = t.data.dtype === "F16";
    if (f16 !== name.startsWith(DELTA_PREFIX)) bad(`tensor ${name} is ${t.data.dtype}`);
    if (end - begin !== count * (f16 ? 2 : 4) || dataStart + end > bytes.length)
      bad(`tensor ${name} has bad offsets`);
    // Copy: the input's byte offset need not be aligned, and the state must not alias the caller's buffer.
    const raw = f16 ? new Uint16Array(count) : new Float32Array(count);
    new Uint8Array(raw.buffer).set(bytes.subarray(dataStart + begin, dataStart + end));
    const data = raw instanceof Uint16Array ? f16ToF32(raw) : raw;
    tensors.set(name, { shape: t.data.shape, data });
  }
  const m = meta.data;
  const need = (name: string, shape?: readonly number[]) => {
    const t = tensors.get(name) ?? bad(`tensor ${name} is missing`);
    if (shape && t.shape.join(",") !== shape.join(","))
      bad(`tensor ${name} has shape [${t.shape}], expected [${shape}]`);
    return t;
  };
  let lora: LoraWeights | null = null;
  for (const name of tensors.keys()) {
    if (!name.startsWith(LORA_PREFIX) || !name.endsWith(LORA_A)) continue;
    const module = name.slice(LORA_PREFIX.length, -LORA_A.length);
    if (m.loraAlpha === null) bad(`LoRA tensor ${name} without a LoRA alpha`);
    const a = need(name);
    const b = need(`${LORA_PREFIX}${module}${LORA_B}`);
    const [rank = 0, inF = 0] = a.shape;
    const [outF = 0, rankB = 0] = b.shape;
    if (a.shape.length !== 2 || b.shape.length !== 2 || rank !== rankB)
      bad(`LoRA ${module} has inconsistent shapes`);
    lora ??= new Map();
    lora.set(module, { down: a.data, up: b.data, rank, alpha: m.loraAlpha, inF, outF });
  }
  let unetDelta: UnetWeights | undefined;
  for (const [name, t] of tensors) {
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
