// The shape an edit works at, shared by the chat layer, the CLI, the queue and the pipelines: how a photo
// of any aspect ratio becomes the size the networks run at, and the limits on photos and requested sizes.
//
// The rule (docs/IMAGIC.md, "Working size"): keep the photo's pixel count near the model's own (its
// sample_size × the VAE factor: 512² for SD 1.x and 2.x-base, 768² for 768-px checkpoints) whatever the
// aspect ratio — equal area, not "longer side 512". Two reasons:
// - cost: the UNet's self-attention costs (h·w)² and its memory grows with h·w, so an equal-area job costs
//   the same time, memory (ENGINE_MAX_TRAIN_BYTES' estimate) and ETA for a square photo and a panorama;
// - quality: SD 1.x/2.x saw 512² (or 768²) images only. A longer-side-512 3:2 photo runs at 66 % of that
//   pixel count, a 4:1 one at 25 % (512×128: a 64×16 latent, too few tokens for faces or text), and SD's
//   detail falls as the pixel count drops below training's; equal area keeps every aspect near it.
//   SDXL trains and samples multi-aspect buckets of ≈ 1024² pixels for the same reason (Podell et al.
//   2023, §2.3), as NovelAI's aspect-ratio bucketing did for SD 1.x fine-tunes.
// Each side is then rounded to the model's size multiple (VAE factor × 2^(UNet levels − 1), 64 for SD),
// so every down-sampling halves a whole number; the photo is fitted inside that box keeping its aspect
// ratio and the few leftover rows or columns are filled with the photo mirrored, then cropped off every
// result ("pad and crop back"): no content is cut, nothing is stretched. A forced size (a square or an
// exact width × height) is honoured exactly: the photo covers it, centre-cropped (that is what asking
// for another aspect ratio means), padded to the multiple and cropped back.
import { z } from "zod";
import { UserFacingError } from "../errors.js";

export interface Size {
  width: number;
  height: number;
}

/** A rectangle inside a working image, in pixels. */
export interface Box extends Size {
  left: number;
  top: number;
}

export const SHAPE_LIMITS = {
  /** Longest side ÷ shortest side, of a photo and of a requested size (SD composes badly beyond it). */
  maxAspect: 4,
  /** Smallest side of a photo, in pixels (below it there is too little to edit). */
  minPhotoSide: 64,
  /** Smallest and largest side of a requested size, in pixels. */
  minSide: 64,
  maxSide: 2048,
  /** Most pixels a requested size may have: 4× SD 1.5's 512², twice as costly as 768² per UNet call. */
  maxPixels: 1024 * 1024,
} as const;

/** What the model asks of a working size (StableDiffusion.imageShape). */
export interface ModelShape {
  /** The size it was trained at, in pixels; its pixel count is the default working area. */
  native: Size;
  /** Every side of a working size is a multiple of it. */
  multiple: number;
}

export interface WorkingShape extends Size {
  /** Where the photo's pixels sit in the working image; the rest is padding that results lose. */
  content: Box;
}

const ratio = (s: Size) => Math.max(s.width, s.height) / Math.min(s.width, s.height);

/**
 * An aspect ratio over `limit`, with two decimals or as many more as it takes to show it is over:
 * 4001×1000 is "4.001", not "4.00" (which would read as within a 4:1 limit).
 */
function ratioOver(size: Size, limit: number): string {
  const r = ratio(size);
  for (let digits = 2; digits < 6; digits++) {
    if (Number(r.toFixed(digits)) > limit) return r.toFixed(digits);
  }
  return r.toFixed(6);
}
const dims = (s: Size) => `${s.width}×${s.height}`;

/** Refuses a photo the working-size rule cannot serve, naming the limit (any model). */
export function checkPhotoShape(photo: Size, what = "the photo"): void {
  const { minPhotoSide, maxAspect } = SHAPE_LIMITS;
  if (Math.min(photo.width, photo.height) < minPhotoSide) {
    throw new UserFacingError(
      `${what} is ${dims(photo)} pixels; each side must be at least ${minPhotoSide} pixels`,
    );
  }
  if (ratio(photo) > maxAspect) {
    throw new UserFacingError(
      `${what} is ${dims(photo)} pixels, an aspect ratio of ${ratioOver(photo, maxAspect)}:1; the limit is ${maxAspect}:1 — crop it closer to what should change`,
    );
  }
}

/** Refuses a requested size outside the limits, naming the option. */
export function checkRequestedSize(size: Size, option = "size"): void {
  const { minSide, maxSide, maxPixels, maxAspect } = SHAPE_LIMITS;
  for (const v of [size.width, size.height]) {
    if (!Number.isInteger(v) || v < minSide || v > maxSide) {
      throw new UserFacingError(
        `${option} ${dims(size)}: each side must be a whole number of pixels from ${minSide} to ${maxSide}`,
      );
    }
  }
  if (size.width * size.height > maxPixels) {
    throw new UserFacingError(
      `${option} ${dims(size)} is ${((size.width * size.height) / 1e6).toFixed(2)} megapixels; the limit is ${(maxPixels / 1e6).toFixed(2)} (${Math.sqrt(maxPixels)}²)`,
    );
  }
  if (ratio(size) > maxAspect) {
    throw new UserFacingError(
      `${option} ${dims(size)} has an aspect ratio of ${ratioOver(size, maxAspect)}:1; the limit is ${maxAspect}:1`,
    );
  }
}

/** "512" (a square) or "768x512" (width × height; "×" works too) → a Size, checked against the limits. */
export function parseSize(text: string, option = "--size"): Size {
  const m = /^\s*(\d+)\s*(?:[x×X]\s*(\d+))?\s*$/.exec(text);
  if (!m) {
    throw new UserFacingError(`${option} must be a side ("512") or width×height ("768x512"), got "${text}"`);
  }
  const width = Number(m[1]);
  const size = { width, height: m[2] === undefined ? width : Number(m[2]) };
  checkRequestedSize(size, option);
  return size;
}

/** One side of a requested size, as the queue's payloads check it. */
const requestedSideSchema = z.number().int().min(SHAPE_LIMITS.minSide).max(SHAPE_LIMITS.maxSide);

/**
 * A forced working size in a job's options (`imagic.train`, `swap.edit`): `width` and `height` in pixels,
 * both or neither. Spread into the options' object and check it with `refineRequestedSize`.
 */
export const requestedSizeFields = {
  width: requestedSideSchema.optional(),
  height: requestedSideSchema.optional(),
};

/** What is wrong with a requested size whose sides are each in range: too many pixels, too elongated. */
function requestedSizeIssues(size: Size): string[] {
  const { maxPixels, maxAspect } = SHAPE_LIMITS;
  return [
    ...(size.width * size.height > maxPixels
      ? [`must be at most ${maxPixels} pixels (${Math.sqrt(maxPixels)}²)`]
      : []),
    ...(ratio(size) > maxAspect ? [`must have an aspect ratio of at most ${maxAspect}:1`] : []),
  ];
}

/** The zod check of `requestedSizeFields` beyond each side's range: both or neither, pixels, aspect ratio. */
export function refineRequestedSize(o: { width?: number; height?: number }, ctx: z.RefinementCtx): void {
  if ((o.width === undefined) !== (o.height === undefined)) {
    ctx.addIssue({ code: "custom", path: ["width"], message: "give both width and height, or neither" });
    return;
  }
  const size = requestedSize(o);
  for (const message of size ? requestedSizeIssues(size) : []) {
    ctx.addIssue({ code: "custom", path: ["width"], message: `width × height ${message}` });
  }
}

/** A job's forced size as a Size (undefined: the photo's own shape). */
export function requestedSize(o: { width?: number; height?: number }): Size | undefined {
  return o.width !== undefined && o.height !== undefined ? { width: o.width, height: o.height } : undefined;
}

/** A forced size as a job's options carry it (nothing when there is none: old jobs look the same). */
export function requestedSizeOptions(size: Size | undefined): { width?: number; height?: number } {
  return size ? { width: size.width, height: size.height } : {};
}

const roundTo = (v: number, m: number) => Math.max(m, Math.round(v / m) * m);
const ceilTo = (v: number, m: number) => Math.ceil(v / m) * m;

/** `content` centred in a working size padded up to the model's multiple. */
function padded(content: Size, model: ModelShape): WorkingShape {
  const width = ceilTo(content.width, model.multiple);
  const height = ceilTo(content.height, model.multiple);
  const left = Math.floor((width - content.width) / 2);
  const top = Math.floor((height - content.height) / 2);
  return { width, height, content: { ...content, left, top } };
}

/**
 * The working shape of a photo on a model: the requested size exactly when given, else the equal-area
 * rule above. Throws a UserFacingError for a photo or size outside SHAPE_LIMITS.
 */
export function workingShape(photo: Size, model: ModelShape, requested?: Size): WorkingShape {
  checkPhotoShape(photo);
  if (requested) {
    checkRequestedSize(requested);
    return padded(requested, model);
  }
  const m = model.multiple;
  const area = model.native.width * model.native.height;
  const aspect = photo.width / photo.height;
  const width = roundTo(Math.sqrt(area * aspect), m);
  const height = roundTo(Math.sqrt(area / aspect), m);
  // The photo fitted inside: it fills one side; the other loses at most half a multiple to rounding.
  const scale = Math.min(width / photo.width, height / photo.height);
  const cw = Math.min(width, Math.round(photo.width * scale));
  const ch = Math.min(height, Math.round(photo.height * scale));
  const content = {
    width: cw,
    height: ch,
    left: Math.floor((width - cw) / 2),
    top: Math.floor((height - ch) / 2),
  };
  return { width, height, content };
}

/** A generated image's shape (txt2img): the requested size, else the model's native one, padded to the multiple. */
export function generationShape(model: ModelShape, requested?: Size): WorkingShape {
  if (requested) checkRequestedSize(requested);
  return padded(requested ?? model.native, model);
}
