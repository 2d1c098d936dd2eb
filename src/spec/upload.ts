// The limits an uploaded photo is checked against — by the chat layer (src/commands/attachments.ts),
// the CLI (`edit … --image`), the engine's loader and the intake's decoder processes alike — and the
// size of the photo the bot stores and queues for the engine. The checks themselves live in
// src/engine/image.ts (probeImage) and src/engine/intake.
import { SHAPE_LIMITS } from "./shape.js";
import { MAX_REFERENCES } from "./swap.js";

export interface ImageLimits {
  /** Largest encoded size. */
  maxBytes: number;
  /** Largest decoded pixel count (width × height of one frame), read from the header before decoding. */
  maxPixels: number;
  /** Largest width or height. */
  maxSide: number;
  /** Smallest width or height. */
  minSide: number;
  /** Accepted container formats, as sharp names them ("avif" for HEIF files of AV1 images). */
  formats: readonly string[];
  /** Accept multi-frame images (animated GIF/WebP); only the first frame is used. */
  allowAnimated: boolean;
  /** Most scans a progressive JPEG may have (intake/jpeg.ts: each costs a pass over the whole image). */
  maxScans: number;
  /** Longest an upload's check and conversion may take in the intake's decoder (intake/pool.ts). */
  decodeTimeoutMs: number;
}

export const DEFAULT_IMAGE_LIMITS: ImageLimits = {
  maxBytes: 20 * 1024 * 1024,
  maxPixels: 40_000_000,
  maxSide: 12_000,
  minSide: 32,
  formats: ["jpeg", "png", "webp", "gif", "tiff", "heif", "avif"],
  allowAnimated: false,
  // Encoders write 1–12; TurboJPEG's own guard (TJPARAM_SCANLIMIT) suggests 500, but 500 scans over
  // 40 megapixels take ~8 s on a 2-core machine: 100 keeps the worst case near a second.
  maxScans: 100,
  // A 40-megapixel JPEG converts in ~2 s on one core; the deadline is for files that never finish.
  decodeTimeoutMs: 15_000,
};

/** The chat bot's limits: the loader's, with the blob store's byte limit and the edits' smallest side. */
export function chatImageLimits(maxBytes: number, overrides: Partial<ImageLimits> = {}): ImageLimits {
  return { ...DEFAULT_IMAGE_LIMITS, minSide: SHAPE_LIMITS.minPhotoSide, maxBytes, ...overrides };
}

/** libvips colour spaces that the loader converts to sRGB faithfully; others (Lab, XYZ…) are refused. */
export const COLOUR_SPACES: ReadonlySet<string> = new Set([
  "srgb",
  "rgb",
  "rgb16",
  "b-w",
  "grey16",
  "cmyk",
  "scrgb",
]);

/** The colour spaces outside COLOUR_SPACES by the names people know them by, not libvips' ("labs"). */
const SPACE_NAMES: Readonly<Record<string, string>> = {
  lab: "CIELAB",
  labq: "CIELAB",
  labs: "CIELAB",
  lch: "CIE LCh",
  cmc: "CMC",
  xyz: "CIE XYZ",
  yxy: "CIE Yxy",
  hsv: "HSV",
  oklab: "Oklab",
  oklch: "Oklch",
};

/** "the CIELAB colour space" for libvips' "labs"; "an unknown colour space" for what has no name. */
export function describeColourSpace(space: string): string {
  const name = SPACE_NAMES[space];
  return name ? `the ${name} colour space` : "an unknown colour space";
}

/** Uploads of one sender checked at once (waiting included): the photos of one /swap (source + 5 references). */
export const MAX_CHECKS_PER_SENDER = 1 + MAX_REFERENCES;

/**
 * Most pixels of the photo the bot stores for the engine: twice the largest requested working size
 * (SHAPE_LIMITS.maxPixels), so every working shape is a reduction of it; larger uploads are scaled down
 * to it at their aspect ratio, smaller ones kept as they are.
 */
export const STORED_PHOTO_MAX_PIXELS = 2 * SHAPE_LIMITS.maxPixels;
