// Why a file that looked like a photo could not be decoded, said in the sender's words. The reason
// comes from the file's own structure (does it end where its format says it ends? which coding does
// it use?), never from the decoder's message: libvips keeps one error buffer per process, so under
// concurrent decodes its text can belong to another upload, and words like "vipspng: libpng read
// error" help nobody. The decoder's text goes to the log only (ImageInputError.detail).
import { isoBoxes, pngChunks } from "./chunks.js";
import { jpegStructure } from "./jpeg.js";
import { firstDirectory } from "./tiff.js";

export const FAILURE_TEXTS = {
  truncated:
    "The image is incomplete: the file ends before the picture does (the upload was probably cut short); send it again.",
  damaged:
    "The image is damaged and could not be decoded; send the original again, or open it and save it again as a JPEG or PNG.",
} as const;

const u32le = (b: Uint8Array, at: number) =>
  ((b[at] as number) |
    ((b[at + 1] as number) << 8) |
    ((b[at + 2] as number) << 16) |
    ((b[at + 3] as number) << 24)) >>>
  0;

/** PNG: the chunks run to IEND without leaving the file. */
function pngComplete(b: Uint8Array): boolean {
  for (const chunk of pngChunks(b)) if (chunk.type === "IEND") return chunk.end <= b.byteLength;
  return false;
}

/** ISO base media (HEIF, AVIF): the top-level boxes fill the file, the last one ending where it does. */
function isoComplete(b: Uint8Array): boolean {
  return isoBoxes(b, 0, b.byteLength).at(-1)?.end === b.byteLength;
}

/**
 * TIFF: the first directory, and every strip or tile it points to, lie within the file. libtiff
 * writes the directory after the pixels, so a file cut short often has none left at all.
 */
function tiffComplete(b: Uint8Array): boolean {
  const dir = firstDirectory(b);
  if (!dir.whole) return false;
  // StripOffsets with StripByteCounts, TileOffsets with TileByteCounts (SHORT, LONG or BigTIFF's LONG8 arrays).
  const arrays = new Map(
    dir.entries.filter((e) => e.type === 3 || e.type === 4 || e.type === 16).map((e) => [e.tag, e]),
  );
  for (const [offsetsTag, countsTag] of [
    [273, 279],
    [324, 325],
  ] as const) {
    const offsetsEntry = arrays.get(offsetsTag);
    if (!offsetsEntry) continue;
    const countsEntry = arrays.get(countsTag);
    const [offsets, counts] = [dir.values(offsetsEntry), countsEntry && dir.values(countsEntry)];
    if (!offsets || !counts) return false;
    if (offsets.some((at, k) => at + (counts[k] ?? 0) > b.byteLength)) return false;
  }
  return true;
}

/** Whether the file stops before the end its own structure declares. */
export function isTruncated(bytes: Uint8Array, format: string): boolean {
  switch (format) {
    case "jpeg":
      return !jpegStructure(bytes).complete;
    case "png":
      return !pngComplete(bytes);
    case "gif":
      return bytes.at(-1) !== 0x3b; // the trailer byte
    case "webp":
      return bytes.byteLength < 8 || u32le(bytes, 4) + 8 > bytes.byteLength;
    case "heif":
    case "avif":
      return !isoComplete(bytes);
    case "tiff":
      return !tiffComplete(bytes);
    default:
      return false;
  }
}

/** The sender's reason a decode of `bytes` (sniffed as `format`) failed. */
export function failureText(bytes: Uint8Array, format: string): string {
  return isTruncated(bytes, format) ? FAILURE_TEXTS.truncated : FAILURE_TEXTS.damaged;
}
