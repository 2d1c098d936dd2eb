/**
 * The file format of what pipelines cache between jobs (an Imagic fine-tune, a learned Photoswap
 * concept): a safetensors file whose `__metadata__` holds the object's JSON under one key, with float32
 * tensors (float16 where a caller stores bits) and LoRA adapters named as diffusers saves them
 * (`unet.<module>.lora_A.weight` [rank, in], `unet.<module>.lora_B.weight` [out, rank]), so a cached state
 * is a few MB and readable by other tools. Written and read byte-exactly: a round trip gives the same
 * bits.
 */
import { z } from "zod";
import { f16ToF32 } from "../graph/dtype.js";
import type { LoraWeights } from "../models/lora.js";

export interface StateTensor {
  name: string;
  shape: number[];
  /** Float16 tensors are given as their bits; everything else float32. */
  data: Float32Array | Uint16Array;
}

export interface DecodedTensor {
  dtype: "F32" | "F16";
  shape: number[];
  /** Float16 tensors converted to float32. */
  data: Float32Array;
}

const tensorSchema = z.object({
  dtype: z.enum(["F32", "F16"]),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});

/** The tensors in order, and `meta` as JSON under `__metadata__[metaKey]`. */
export function encodeStateFile(tensors: readonly StateTensor[], metaKey: string, meta: unknown): Uint8Array {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const e of tensors) {
    const expected = e.shape.reduce((x, y) => x * y, 1);
    if (e.data.length !== expected) {
      throw new Error(`state file: ${e.name} has ${e.data.length} values for shape [${e.shape}]`);
    }
    const dtype = e.data instanceof Uint16Array ? "F16" : "F32";
    header[e.name] = { dtype, shape: e.shape, data_offsets: [offset, offset + e.data.byteLength] };
    offset += e.data.byteLength;
  }
  // safetensors: metadata values are strings; the header is padded with spaces to 8-byte alignment.
  header.__metadata__ = { [metaKey]: JSON.stringify(meta) };
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length)
    json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(padded - json.length));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const e of tensors) {
    out.set(new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength), at);
    at += e.data.byteLength;
  }
  return out;
}

/** A zod error's issues as one line: "path: message; …". */
function issues(e: z.ZodError): string {
  return e.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
}

/**
 * The metadata JSON under `metaKey`, checked against `metaSchema`, and every tensor, copied out of
 * `bytes`. `bad` throws the caller's "not a usable …" error with the problem found; `kind` names the
 * content ("Imagic") when the metadata is missing.
 */
export function decodeStateFile<M>(
  bytes: Uint8Array,
  metaKey: string,
  kind: string,
  bad: (problem: string) => never,
  metaSchema: z.ZodType<M>,
): { meta: M; tensors: Map<string, DecodedTensor> } {
  if (bytes.length < 8) bad(`${bytes.length} bytes is too short`);
  const headerLen = Number(
    new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true),
  );
  if (headerLen > bytes.length - 8) bad(`header length ${headerLen} exceeds the ${bytes.length} bytes`);
  let header: Record<string, unknown>;
  let meta: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
    const text = (header.__metadata__ as Record<string, unknown> | undefined)?.[metaKey];
    meta = typeof text === "string" ? JSON.parse(text) : undefined;
  } catch {
    return bad("the header is not JSON");
  }
  if (meta === undefined) bad(`no ${kind} metadata (is this a safetensors file from elsewhere?)`);
  const dataStart = 8 + headerLen;
  const tensors = new Map<string, DecodedTensor>();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const t = tensorSchema.safeParse(info);
    if (!t.success) bad(`tensor ${name}: ${issues(t.error)}`);
    const [begin, end] = t.data.data_offsets;
    const count = t.data.shape.reduce((x, y) => x * y, 1);
    const f16 = t.data.dtype === "F16";
    if (end - begin !== count * (f16 ? 2 : 4) || dataStart + end > bytes.length)
      bad(`tensor ${name} has bad offsets`);
    // Copy: the input's byte offset need not be aligned, and the state must not alias the caller's buffer.
    const raw = f16 ? new Uint16Array(count) : new Float32Array(count);
    new Uint8Array(raw.buffer).set(bytes.subarray(dataStart + begin, dataStart + end));
    const data = raw instanceof Uint16Array ? f16ToF32(raw) : raw;
    tensors.set(name, { dtype: t.data.dtype, shape: t.data.shape, data });
  }
  const parsed = metaSchema.safeParse(meta);
  if (!parsed.success) bad(`metadata: ${issues(parsed.error)}`);
  return { meta: parsed.data, tensors };
}

const LORA_PREFIX = "unet.";
const LORA_A = ".lora_A.weight";
const LORA_B = ".lora_B.weight";

/** LoRA adapters as diffusers names them, and the one alpha they share (null without LoRA). */
export function loraTensors(lora: LoraWeights | null | undefined): {
  tensors: StateTensor[];
  alpha: number | null;
} {
  const tensors: StateTensor[] = [];
  for (const [module, a] of lora ?? []) {
    tensors.push({ name: `${LORA_PREFIX}${module}${LORA_A}`, shape: [a.rank, a.inF], data: a.down });
    tensors.push({ name: `${LORA_PREFIX}${module}${LORA_B}`, shape: [a.outF, a.rank], data: a.up });
  }
  const alphas = new Set([...(lora?.values() ?? [])].map((a) => a.alpha));
  if (alphas.size > 1) throw new Error(`state file: LoRA adapters with different alphas (${[...alphas]})`);
  return { tensors, alpha: alphas.size === 1 ? ([...alphas][0] as number) : null };
}

/** The LoRA adapters among decoded tensors (null when there are none). */
export function loraFromTensors(
  tensors: ReadonlyMap<string, DecodedTensor>,
  alpha: number | null,
  bad: (problem: string) => never,
): LoraWeights | null {
  let lora: LoraWeights | null = null;
  for (const [name, a] of tensors) {
    if (!name.startsWith(LORA_PREFIX) || !name.endsWith(LORA_A)) continue;
    const module = name.slice(LORA_PREFIX.length, -LORA_A.length);
    if (alpha === null) bad(`LoRA tensor ${name} without a LoRA alpha`);
    const b = requireTensor(tensors, `${LORA_PREFIX}${module}${LORA_B}`, bad);
    const [rank = 0, inF = 0] = a.shape;
    const [outF = 0, rankB = 0] = b.shape;
    if (
      a.shape.length !== 2 ||
      b.shape.length !== 2 ||
      rank !== rankB ||
      a.dtype !== "F32" ||
      b.dtype !== "F32"
    )
      bad(`LoRA ${module} has inconsistent shapes`);
    lora ??= new Map();
    lora.set(module, { down: a.data, up: b.data, rank, alpha, inF, outF });
  }
  return lora;
}

/** A decoded tensor by name, of the given shape when one is given. */
export function requireTensor(
  tensors: ReadonlyMap<string, DecodedTensor>,
  name: string,
  bad: (problem: string) => never,
  shape?: readonly number[],
): DecodedTensor {
  const t = tensors.get(name) ?? bad(`tensor ${name} is missing`);
  if (shape && t.shape.join(",") !== shape.join(","))
    bad(`tensor ${name} has shape [${t.shape}], expected [${shape}]`);
  return t;
}
