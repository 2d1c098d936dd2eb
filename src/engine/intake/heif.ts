// HEIC photos (what iPhones save by default) hold HEVC-coded images. sharp's prebuilt libvips carries
// libheif with the AV1 decoder only (AVIF works) — HEVC is left out for patent reasons — so HEVC HEIC
// is decoded here with libheif-js: libheif with libde265 compiled to WebAssembly (LGPL-3.0, loaded
// unmodified from node_modules). libheif applies the file's rotation, mirroring and crop (irot, imir,
// clap) and composes grid images (iPhones store 512×512 tiles); the result is RGBA, 8 bits.
import { createRequire } from "node:module";
import { type IsoBox, isoBoxes } from "./chunks.js";

interface EmbindEnum {
  value: number;
}
interface HeifChannel {
  width: number;
  height: number;
  stride: number;
  data: Uint8Array;
}
interface LibHeif {
  heif_context_alloc(): unknown;
  heif_context_free(context: unknown): void;
  heif_context_read_from_memory(context: unknown, bytes: Uint8Array): { code: EmbindEnum; message: string };
  heif_js_context_get_primary_image_handle(context: unknown): unknown;
  heif_image_handle_release(handle: unknown): void;
  heif_js_decode_image2(
    handle: unknown,
    colourspace: EmbindEnum,
    chroma: EmbindEnum,
  ): Promise<{ code?: EmbindEnum; message?: string; image: unknown; channels: HeifChannel[] }>;
  heif_image_release(image: unknown): void;
  heif_colorspace: { heif_colorspace_RGB: EmbindEnum };
  heif_chroma: { heif_chroma_interleaved_RGBA: EmbindEnum };
}

let module: LibHeif | undefined;
/** Loaded on first use: half a second and some 10 MB that most processes never need. */
function libheif(): LibHeif {
  module ??= createRequire(import.meta.url)("libheif-js/wasm-bundle") as LibHeif;
  return module;
}

/** Raised with libheif's own words; the caller turns it into a message for the user. */
export class HeifDecodeError extends Error {
  override name = "HeifDecodeError";
}

export interface DecodedHeif {
  width: number;
  height: number;
  /** RGBA, rows packed. */
  rgba: Uint8Array;
}

/** Decodes the primary image of a HEIF file. */
export async function decodeHeif(bytes: Uint8Array): Promise<DecodedHeif> {
  const heif = libheif();
  const context = heif.heif_context_alloc();
  let handle: unknown;
  let image: unknown;
  try {
    const read = heif.heif_context_read_from_memory(context, bytes);
    if (read.code.value !== 0) throw new HeifDecodeError(`libheif: ${read.message}`);
    handle = heif.heif_js_context_get_primary_image_handle(context);
    if (!handle || (handle as { code?: unknown }).code !== undefined)
      throw new HeifDecodeError("libheif: no primary image");
    const decoded = await heif.heif_js_decode_image2(
      handle,
      heif.heif_colorspace.heif_colorspace_RGB,
      heif.heif_chroma.heif_chroma_interleaved_RGBA,
    );
    if (!decoded || decoded.code !== undefined || !decoded.channels?.[0])
      throw new HeifDecodeError(`libheif: ${decoded?.message ?? "decoding failed"}`);
    image = decoded.image;
    const { width, height, stride, data } = decoded.channels[0];
    if (stride === width * 4) return { width, height, rgba: data.slice(0, width * height * 4) };
    const rgba = new Uint8Array(width * height * 4);
    for (let y = 0; y < height; y++)
      rgba.set(data.subarray(y * stride, y * stride + width * 4), y * width * 4);
    return { width, height, rgba };
  } finally {
    if (image) heif.heif_image_release(image);
    if (handle) heif.heif_image_handle_release(handle);
    heif.heif_context_free(context);
  }
}

/**
 * Decoded HEIF pixels with the file's ICC profile, as an uncompressed baseline TIFF (RGBA, one strip,
 * little-endian). libvips converts to sRGB through a profile embedded in what it loads, and raw pixels
 * cannot carry one: iPhones tag their photos Display P3, whose values read as sRGB look dull.
 */
export function rgbaTiff({ width, height, rgba }: DecodedHeif, icc: Uint8Array): Uint8Array {
  // Tag, type (3 SHORT, 4 LONG, 7 UNDEFINED), count, value (or the offset of values over 4 bytes).
  const entries = 12;
  const bitsAt = 8 + 2 + entries * 12 + 4;
  const iccAt = bitsAt + 8;
  const dataAt = iccAt + icc.byteLength + (icc.byteLength % 2); // offsets are even
  const tags: Array<[number, number, number, number]> = [
    [256, 4, 1, width],
    [257, 4, 1, height],
    [258, 3, 4, bitsAt], // 8, 8, 8, 8
    [259, 3, 1, 1], // no compression
    [262, 3, 1, 2], // RGB
    [273, 4, 1, dataAt],
    [277, 3, 1, 4],
    [278, 4, 1, height],
    [279, 4, 1, rgba.byteLength],
    [284, 3, 1, 1], // interleaved
    [338, 3, 1, 2], // the fourth sample is unassociated alpha
    [34675, 7, icc.byteLength, iccAt], // InterColorProfile
  ];
  const out = new Uint8Array(dataAt + rgba.byteLength);
  const view = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]);
  view.setUint32(4, 8, true);
  view.setUint16(8, entries, true);
  tags.forEach(([tag, type, count, value], i) => {
    const at = 10 + 12 * i;
    view.setUint16(at, tag, true);
    view.setUint16(at + 2, type, true);
    view.setUint32(at + 4, count, true);
    if (type === 3 && count === 1) view.setUint16(at + 8, value, true);
    else view.setUint32(at + 8, value, true);
  });
  for (let i = 0; i < 4; i++) view.setUint16(bitsAt + 2 * i, 8, true);
  out.set(icc, iccAt);
  out.set(rgba, dataAt);
  return out;
}

/**
 * The colour primaries (ISO/IEC 23091-2 codes: 1 BT.709/sRGB, 12 P3-D65, 9 BT.2020) that a HEIF or AVIF
 * file's primary image declares in an `nclx` colour box, when it has no ICC profile (`prof`, `rICC`);
 * undefined otherwise, or where the boxes do not say. libvips converts through an ICC profile only and
 * takes code-tagged pixels as sRGB, so a Display P3 photo tagged by codes would come out dull.
 */
export function nclxPrimaries(b: Uint8Array): number | undefined {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const find = (boxes: IsoBox[], type: string) => boxes.find((x) => x.type === type);
  const meta = find(isoBoxes(b, 0, b.byteLength), "meta");
  if (!meta) return undefined;
  const inMeta = isoBoxes(b, meta.start + 4, meta.end); // meta is a full box: version and flags first
  const [pitm, iprp] = [find(inMeta, "pitm"), find(inMeta, "iprp")];
  if (!pitm || !iprp || pitm.start + 6 > pitm.end) return undefined;
  const primary = b[pitm.start] === 0 ? view.getUint16(pitm.start + 4) : view.getUint32(pitm.start + 4);
  const inIprp = isoBoxes(b, iprp.start, iprp.end);
  const [ipco, ipma] = [find(inIprp, "ipco"), find(inIprp, "ipma")];
  if (!ipco || !ipma || ipma.start + 8 > ipma.end) return undefined;
  const properties = isoBoxes(b, ipco.start, ipco.end);
  // ipma: for each item, its properties by 1-based index into ipco (7 or 15 bits, the top bit "essential").
  const version = b[ipma.start] as number;
  const wide = ((b[ipma.start + 3] as number) & 1) === 1;
  const colours: IsoBox[] = [];
  let at = ipma.start + 8;
  for (let n = view.getUint32(ipma.start + 4); n > 0; n--) {
    const idBytes = version < 1 ? 2 : 4;
    if (at + idBytes + 1 > ipma.end) return undefined;
    const id = version < 1 ? view.getUint16(at) : view.getUint32(at);
    const count = b[at + idBytes] as number;
    at += idBytes + 1;
    if (at + count * (wide ? 2 : 1) > ipma.end) return undefined;
    for (let k = 0; k < count; k++, at += wide ? 2 : 1) {
      const index = wide ? view.getUint16(at) & 0x7fff : (b[at] as number) & 0x7f;
      const box = properties[index - 1];
      if (id === primary && box?.type === "colr") colours.push(box);
    }
  }
  const kind = (box: IsoBox) => String.fromCharCode(...b.subarray(box.start, box.start + 4));
  if (colours.some((c) => kind(c) === "prof" || kind(c) === "rICC")) return undefined;
  const nclx = colours.find((c) => kind(c) === "nclx" && c.start + 6 <= c.end);
  return nclx ? view.getUint16(nclx.start + 4) : undefined;
}
