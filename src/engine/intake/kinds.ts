// What kind of file an upload is, from its first bytes (its "magic number"), and how to name a kind
// to the person who sent it ("a BMP image", "an MP4 video"). The loader hands bytes to libvips only
// when they start like a format we accept: libvips picks its loader from the same bytes, so nothing
// else it can read (SVG, PDF, matrix and CSV files, FITS…) is ever reached through an upload.
import { pngChunks } from "./chunks.js";
import { firstDirectory } from "./tiff.js";

/** Accepted formats, as sharp names them (ImageLimits.formats), with the name people know them by. */
export const FORMAT_NAMES: Readonly<Record<string, string>> = {
  jpeg: "JPEG",
  png: "PNG",
  webp: "WebP",
  gif: "GIF",
  tiff: "TIFF",
  heif: "HEIC",
  avif: "AVIF",
};

export interface FileKind {
  /** sharp's format name when it is one we may accept, else undefined. */
  format?: string;
  /** Said to the user: "a BMP image", "an MP4 video", "a text file". */
  described: string;
}

const ascii = (bytes: Uint8Array, from: number, to: number) =>
  String.fromCharCode(...bytes.subarray(from, Math.min(to, bytes.byteLength)));
const startsWith = (bytes: Uint8Array, signature: readonly number[], at = 0) =>
  bytes.byteLength >= at + signature.length && signature.every((b, i) => bytes[at + i] === b);

/** ISO base media file brands (HEIF, AVIF, MP4, QuickTime, Canon CR3) → what they are. */
function isoKind(brand: string): FileKind {
  if (brand === "avif" || brand === "avis") return { format: "avif", described: "an AVIF image" };
  if (["heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "mif2"].includes(brand))
    return { format: "heif", described: "a HEIC image" };
  if (brand === "crx ") return { described: "a Canon raw photo (CR3)" };
  if (brand === "qt  ") return { described: "a QuickTime video" };
  if (brand.startsWith("3g")) return { described: "a 3GP video" };
  return { described: "an MP4 video" };
}

/**
 * A TIFF, or a camera raw photo built on TIFF: of those libvips reads only the first image, a
 * thumbnail or preview, while the photo is a raw sensor image elsewhere in the file. Known by the
 * CR2 header, a DNGVersion tag, or a first image marked as a reduced-resolution copy (NewSubFileType
 * bit 0: Nikon, Sony, Pentax raws). Reads the first directory's entries only, bounds-checked.
 */
function tiffKind(bytes: Uint8Array): FileKind {
  if (ascii(bytes, 8, 11) === "CR\x02") return { described: "a Canon raw photo (CR2)" };
  const dir = firstDirectory(bytes);
  if (dir.entries.some((e) => e.tag === 50706)) return { described: "a DNG raw photo" };
  // NewSubFileType (a LONG, a SHORT in old files), bit 0: a reduced-resolution copy.
  const subfile = dir.entries.find((e) => e.tag === 254);
  const preview = subfile !== undefined && ((dir.values(subfile)?.[0] ?? 0) & 1) === 1;
  return preview ? { described: "a camera raw photo" } : { format: "tiff", described: "a TIFF image" };
}

/**
 * Camera raws that do not open as a TIFF does (their own variant of its header, or a format of their
 * own): [offset, signature, what they are]. Named, so the photographer knows to export a JPEG.
 */
const RAW_SIGNATURES: ReadonlyArray<readonly [number, string, string]> = [
  [0, "FUJIFILMCCD-RAW", "a Fujifilm raw photo (RAF)"],
  [0, "IIRO", "an Olympus raw photo (ORF)"],
  [0, "IIRS", "an Olympus raw photo (ORF)"],
  [0, "MMOR", "an Olympus raw photo (ORF)"],
  [0, "IIU\0", "a Panasonic raw photo (RW2)"],
  [6, "HEAPCCDR", "a Canon raw photo (CRW)"],
  [0, "FOVb", "a Sigma raw photo (X3F)"],
];

/** The kind of `bytes` by their first bytes; `described` is "a file of an unknown kind" when none fits. */
export function sniffKind(bytes: Uint8Array): FileKind {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return { format: "jpeg", described: "a JPEG image" };
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
    return { format: "png", described: "a PNG image" };
  const head = ascii(bytes, 0, 12);
  if (head.startsWith("GIF87a") || head.startsWith("GIF89a"))
    return { format: "gif", described: "a GIF image" };
  if (head.startsWith("RIFF") && head.slice(8, 12) === "WEBP")
    return { format: "webp", described: "a WebP image" };
  if (["II*\0", "MM\0*", "II+\0", "MM\0+"].includes(head.slice(0, 4))) return tiffKind(bytes);
  const raw = RAW_SIGNATURES.find(([at, signature]) => ascii(bytes, at, at + signature.length) === signature);
  if (raw) return { described: raw[2] };
  if (head.slice(4, 8) === "ftyp") return isoKind(head.slice(8, 12));
  // QuickTime files from before ftyp (older cameras and Macs) open straight with a movie or media atom.
  if (["moov", "mdat", "wide", "free", "skip", "pnot"].includes(head.slice(4, 8)))
    return { described: "a QuickTime video" };
  if (head.startsWith("BM")) return { described: "a BMP image" };
  if (startsWith(bytes, [0, 0, 1, 0]) || startsWith(bytes, [0, 0, 2, 0]))
    return { described: "an icon file" };
  if (head.startsWith("8BPS")) return { described: "a Photoshop document (PSD)" };
  if (head.startsWith("%PDF")) return { described: "a PDF document" };
  // PostScript is text ("a text file" would puzzle whoever saved an EPS); DOS EPS wraps it in a binary header.
  if (head.startsWith("%!PS") || startsWith(bytes, [0xc5, 0xd0, 0xd3, 0xc6]))
    return { described: "a PostScript or EPS file" };
  if (startsWith(bytes, [0xff, 0x0a]) || head.slice(4, 8) === "JXL ") return { described: "a JPEG XL image" };
  if (head.slice(4, 8) === "jP  " || startsWith(bytes, [0xff, 0x4f, 0xff, 0x51]))
    return { described: "a JPEG 2000 image" };
  if (startsWith(bytes, [0x76, 0x2f, 0x31, 0x01])) return { described: "an OpenEXR image" };
  if (head.startsWith("RIFF") && head.slice(8, 12) === "AVI ") return { described: "an AVI video" };
  if (head.startsWith("RIFF") && head.slice(8, 12) === "WAVE") return { described: "a WAV sound file" };
  if (startsWith(bytes, [0x1a, 0x45, 0xdf, 0xa3])) return { described: "a WebM or Matroska video" };
  if (head.startsWith("PK\x03\x04")) return { described: "a ZIP archive" };
  const text = new TextDecoder()
    .decode(bytes.subarray(0, 512))
    .replace(/^\uFEFF/, "")
    .trimStart();
  // Illustrator and Inkscape put a comment before the <svg> element; a saved web page may begin with one.
  if (/^<(\?xml|svg|!DOCTYPE svg|!--)/i.test(text) && /<svg/i.test(text))
    return { described: "an SVG image" };
  if (/^(<!--[\s\S]*?-->\s*)?<(!DOCTYPE html|html|head|body)[\s>]/i.test(text))
    return { described: "a web page (HTML)" };
  if (bytes.byteLength > 0 && /^[\t\n\r\x20-\x7e\u00a0-\uffff]*$/.test(text) && !text.includes("\ufffd"))
    return { described: "a text file" };
  return { described: "a file of an unknown kind" };
}

/**
 * The frames an animated PNG (APNG) declares in its acTL chunk, which comes before the image data; 1
 * for a still PNG. libvips reads only the default image of an APNG and reports a single page, so
 * without this an animation would be taken as a still of its first frame, while an animated GIF or
 * WebP is refused.
 */
export function apngFrames(png: Uint8Array): number {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  for (const { type, start } of pngChunks(png)) {
    if (type === "IDAT") break;
    if (type === "acTL" && start + 4 <= png.byteLength) return Math.max(1, view.getUint32(start));
  }
  return 1;
}

/** Media types as platforms declare them → the same words ("image/bmp" → "a BMP image"). */
const MEDIA_TYPES: Readonly<Record<string, string>> = {
  "image/jpeg": "a JPEG image",
  "image/png": "a PNG image",
  "image/gif": "a GIF image",
  "image/webp": "a WebP image",
  "image/tiff": "a TIFF image",
  "image/heic": "a HEIC image",
  "image/heif": "a HEIC image",
  "image/avif": "an AVIF image",
  "image/bmp": "a BMP image",
  "image/x-ms-bmp": "a BMP image",
  "image/svg+xml": "an SVG image",
  "text/html": "a web page (HTML)",
  "image/x-icon": "an icon file",
  "image/vnd.microsoft.icon": "an icon file",
  "image/vnd.adobe.photoshop": "a Photoshop document (PSD)",
  "image/jxl": "a JPEG XL image",
  "image/x-adobe-dng": "a DNG raw photo",
  "image/dng": "a DNG raw photo",
  "image/x-canon-cr2": "a Canon raw photo (CR2)",
  "image/jp2": "a JPEG 2000 image",
  "application/pdf": "a PDF document",
  "application/postscript": "a PostScript or EPS file",
  "application/zip": "a ZIP archive",
  "video/quicktime": "a QuickTime video",
};

/** A declared media type in words: known ones by name, else by family ("a video", "a text file"). */
export function describeMediaType(type: string): string {
  const known = MEDIA_TYPES[type];
  if (known) return known;
  const [family, subtype = ""] = type.split("/");
  const name =
    subtype
      .replace(/^(x-|vnd\.)/, "")
      .split(/[+.;]/)[0]
      ?.toUpperCase() ?? "";
  if (family === "video") return name ? `${article(name)} ${name} video` : "a video";
  if (family === "audio") return "a sound file";
  if (family === "text") return "a text file";
  if (family === "image" && name) return `${article(name)} ${name} image`;
  return "a file that is not an image";
}

/** "a" or "an" before an abbreviation read letter by letter or a word (BMP → a, SVG → an, MP4 → an). */
function article(name: string): string {
  return /^[AEFHILMNORSX]/.test(name) && !name.startsWith("HE") ? "an" : "a";
}

/** "JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF" for the formats accepted. */
export function formatList(formats: readonly string[]): string {
  const names = [...new Set(formats.map((f) => FORMAT_NAMES[f] ?? f.toUpperCase()))];
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : (names[0] ?? "");
}
