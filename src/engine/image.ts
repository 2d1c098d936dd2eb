/**
 * Photos in and out of the engine, with sharp (libvips).
 *
 * In: validate the bytes first (probeImage: a still photo format by its first bytes, sane dimensions, a
 * sane JPEG scan count — read from the header and markers before anything is decoded, so a tiny file
 * declaring 100 000² pixels or thousands of progressive scans is refused cheaply), then decode the
 * first frame (HEVC HEIC through libheif-js: intake/heif.ts), apply the EXIF orientation, convert to
 * 8-bit sRGB (CMYK, 16-bit, grey, ICC-tagged input), flatten transparency onto white, resize to the
 * working shape's content box (src/spec/shape.ts: the photo's own aspect ratio, or a requested size it
 * covers and is centre-cropped to), mirror it into the padding around that box, and scale to [-1, 1] NCHW.
 * Every refusal says what is wrong in the sender's words (intake/failures.ts); the decoder's own text
 * goes to ImageInputError.detail, for the log.
 * Out: a [3, H, W] (or [1, 3, H, W]) tensor in [-1, 1] → PNG, rounded as diffusers' numpy_to_pil; a
 * result's content box cut out of the working image (`cropImage`).
 */
import sharp, { type Metadata, type OutputInfo, type Sharp } from "sharp";
import { UserFacingError } from "../errors.js";
import { type Box, type ModelShape, type Size, type WorkingShape, workingShape } from "../spec/shape.js";
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from "../spec/upload.js";
import { failureText } from "./intake/failures.js";
import { type DecodedHeif, decodeHeif, nclxPrimaries, rgbaTiff } from "./intake/heif.js";
import { jpegStructure, mayLackOnlyEoi } from "./intake/jpeg.js";
import { apngFrames, formatList, sniffKind } from "./intake/kinds.js";
import { withGammaProfile } from "./intake/png-gamma.js";

/** Bad image input; the message names the problem and the limit and is meant for the person who sent it. */
export class ImageInputError extends UserFacingError {
  override name = "ImageInputError";
  /** What the decoder said, for the log: never shown to the sender (it may not even be about their file). */
  readonly detail: string | undefined;

  constructor(message: string, options: { detail?: string } = {}) {
    super(message);
    this.detail = options.detail;
  }
}

export interface ImageProbe {
  /** sharp's format name, except "avif" for HEIF files of AV1 images. */
  format: string;
  /** As displayed, i.e. after the EXIF orientation. */
  width: number;
  height: number;
  /** EXIF orientation (1–8; 1 when absent). */
  orientation: number;
  pages: number;
  animated: boolean;
  pixels: number;
  hasAlpha: boolean;
  /** libvips colour space of the stored pixels: srgb, cmyk, b-w, rgb16, grey16, … */
  space: string;
  /** Whether it embeds an ICC profile. */
  profile: boolean;
  /** The coding inside a HEIF file (hevc, av1), else undefined. */
  compression?: string;
  bytes: number;
}

const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

/** Both in megapixels, with as many decimals as it takes to tell them apart (40.01 vs 40.00). */
function megapixels(pixels: number, limit: number): [string, string] {
  for (let digits = 1; digits < 6; digits++) {
    const [a, b] = [(pixels / 1e6).toFixed(digits), (limit / 1e6).toFixed(digits)];
    if (a !== b) return [a, b];
  }
  return [(pixels / 1e6).toFixed(6), (limit / 1e6).toFixed(6)];
}

/** Codings inside HEIF that sharp (AV1) or intake/heif.ts (HEVC) decode. */
const HEIF_CODINGS = ["hevc", "av1"];

/** The colour channels of the colour spaces whose samples checkSamples judges, and their names. */
const COLOUR_BANDS: Readonly<Record<string, { bands: number; name: string }>> = {
  srgb: { bands: 3, name: "RGB" },
  rgb: { bands: 3, name: "RGB" },
  rgb16: { bands: 3, name: "RGB" },
  scrgb: { bands: 3, name: "RGB" },
  "b-w": { bands: 1, name: "greyscale" },
  grey16: { bands: 1, name: "greyscale" },
  cmyk: { bands: 4, name: "CMYK" },
};

/** libvips sample formats other than 8- and 16-bit unsigned integers, in words. */
const SAMPLE_FORMATS: Readonly<Record<string, string>> = {
  char: "8-bit signed integer",
  short: "16-bit signed integer",
  uint: "32-bit integer",
  int: "32-bit signed integer",
  float: "32-bit floating-point",
  double: "64-bit floating-point",
  complex: "complex",
  dpcomplex: "complex",
};

/**
 * Refuses what the conversion to 8-bit sRGB decodes without an error but into wrong pixels, or fails
 * on with a decoder message that would call the file damaged. libvips scales 8- and 16-bit samples,
 * and reads float RGB as scRGB (linear light, 1.0 white: what HDR and 32-bit TIFFs hold), but it takes
 * float grey and CMYK as 0–255 and 32-bit or signed integers unscaled: such a TIFF would come out
 * black or clipped. A TIFF with more channels than its colours and one alpha (Photoshop's saved
 * selections, spot colours) cannot be converted at all. Colour spaces not listed (Lab…) are judged by
 * their name (COLOUR_SPACES in src/spec/upload.ts).
 */
function checkSamples(meta: Metadata): void {
  const space = COLOUR_BANDS[meta.space ?? ""];
  if (!space) return;
  const sample = SAMPLE_FORMATS[meta.depth ?? ""];
  const floatRgb = meta.space === "scrgb" && (meta.depth === "float" || meta.depth === "double");
  if (sample && !floatRgb) {
    throw new ImageInputError(
      `The image stores ${sample} ${space.name} pixels; I read 8- and 16-bit images (and 32-bit floating-point RGB) — save it as an 8- or 16-bit image.`,
    );
  }
  const channels = meta.channels ?? space.bands;
  if (channels > space.bands + 1) {
    throw new ImageInputError(
      `The image has ${channels} channels: ${space.name}, alpha and ${channels - space.bands - 1} more; save it without the extra channels (as a PNG, say).`,
    );
  }
}

/** Reads the header and checks it against `limits`; throws ImageInputError naming what is wrong. */
export async function probeImage(
  bytes: Uint8Array,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
): Promise<ImageProbe> {
  if (bytes.byteLength > limits.maxBytes) {
    throw new ImageInputError(`The image is ${mib(bytes.byteLength)}; the limit is ${mib(limits.maxBytes)}.`);
  }
  // An upload that arrived empty (a failed upload, a placeholder file): not "an image I cannot read".
  if (bytes.byteLength === 0)
    throw new ImageInputError("That file is empty (0 bytes); send the photo again.");
  const accepted = formatList(limits.formats);
  const kind = sniffKind(bytes);
  if (!kind.format || !limits.formats.includes(kind.format)) {
    throw new ImageInputError(
      kind.described === "a file of an unknown kind"
        ? `That file is not an image I can read; send a ${accepted} image.`
        : `That file is ${kind.described}; send a ${accepted} image.`,
    );
  }
  const format = kind.format;
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new ImageInputError(failureText(bytes, format), { detail: (err as Error).message });
  }
  const compression = format === "heif" || format === "avif" ? meta.compression : undefined;
  if (compression !== undefined && !HEIF_CODINGS.includes(compression)) {
    throw new ImageInputError(
      `The image is a HEIF file of ${compression.toUpperCase()}-coded pictures, which I cannot decode; send it as a JPEG.`,
    );
  }
  const orientation = meta.orientation ?? 1;
  const storedW = meta.width ?? 0;
  const storedH = meta.pageHeight ?? meta.height ?? 0;
  const [width, height] = orientation >= 5 ? [storedH, storedW] : [storedW, storedH];
  const pages = format === "png" ? Math.max(meta.pages ?? 1, apngFrames(bytes)) : (meta.pages ?? 1);
  const probe: ImageProbe = {
    format,
    width,
    height,
    orientation,
    pages,
    // A HEIF file's other images (bursts, thumbnails) are not frames: its primary image is the photo.
    animated: pages > 1 && (format === "gif" || format === "webp" || format === "png"),
    pixels: width * height,
    hasAlpha: meta.hasAlpha ?? false,
    space: meta.space ?? "unknown",
    profile: meta.hasProfile ?? false,
    ...(compression ? { compression } : {}),
    bytes: bytes.byteLength,
  };
  if (probe.animated && !limits.allowAnimated) {
    throw new ImageInputError(`The image is animated (${pages} frames); send a still image.`);
  }
  if (format === "tiff" && pages > 1) {
    throw new ImageInputError(
      `The image is a TIFF of ${pages} pages; send one page, saved as a single-page image.`,
    );
  }
  if (width > limits.maxSide || height > limits.maxSide) {
    throw new ImageInputError(
      `The image is ${width}×${height}; the largest side allowed is ${limits.maxSide} pixels.`,
    );
  }
  if (probe.pixels > limits.maxPixels) {
    const [has, limit] = megapixels(probe.pixels, limits.maxPixels);
    throw new ImageInputError(
      `The image is ${width}×${height}, ${has} megapixels; the limit is ${limit} megapixels.`,
    );
  }
  if (width < limits.minSide || height < limits.minSide) {
    throw new ImageInputError(
      `The image is ${width}×${height}; each side must be at least ${limits.minSide} pixels.`,
    );
  }
  checkSamples(meta);
  if (format === "jpeg") {
    const { scans, precision } = jpegStructure(bytes);
    // libvips reads JPEG's 8-bit samples only: others fail as if the file were damaged. The standard
    // allows 12 bits (and 2–16 in lossless files); any other value is damage, left to the decoder.
    if (precision !== undefined && precision !== 8 && precision >= 2 && precision <= 16) {
      throw new ImageInputError(
        `The image is a ${precision}-bit JPEG, which I cannot read (I read 8-bit JPEGs, what cameras and phones write); save it as an 8-bit JPEG, or as a 16-bit PNG.`,
      );
    }
    if (scans > limits.maxScans) {
      throw new ImageInputError(
        `The image is a progressive JPEG of ${scans} scans; the limit is ${limits.maxScans} (cameras and editors write at most a dozen) — open it and save it again as a JPEG.`,
      );
    }
  }
  return probe;
}

/**
 * The photo's first frame as a sharp pipeline: decoded (HEVC HEIC by libheif-js, already oriented),
 * with the EXIF orientation applied. Throws ImageInputError when the bytes cannot be decoded.
 */
export async function decodeImage(bytes: Uint8Array, probe: ImageProbe, limits: ImageLimits): Promise<Sharp> {
  // A HEIF's colour may be given by codes rather than a profile: Display P3 by codes gets P3's profile.
  const p3ByCodes = (probe.format === "heif" || probe.format === "avif") && nclxPrimaries(bytes) === P3_D65;
  if (probe.compression === "hevc" || p3ByCodes) {
    try {
      // libheif-js gives the coded values; the profile (Display P3 on iPhones) says what they mean.
      const heif = probe.compression === "hevc" ? await decodeHeif(bytes) : await rgbaOf(bytes, limits);
      const icc = p3ByCodes ? await displayP3Profile() : (await sharp(bytes).metadata()).icc;
      if (icc) return sharp(rgbaTiff(heif, icc), { limitInputPixels: limits.maxPixels });
      return sharp(heif.rgba, { raw: { width: heif.width, height: heif.height, channels: 4 } });
    } catch (err) {
      throw new ImageInputError(failureText(bytes, probe.format), { detail: (err as Error).message });
    }
  }
  // HEIF: no page, so libvips loads the primary image rather than the first one in the file.
  const frame = probe.format === "heif" || probe.format === "avif" ? {} : { page: 0, pages: 1 };
  // A PNG's gAMA and cHRM chunks, where they say the values are not sRGB, as the profile they describe.
  const profiled = probe.format === "png" ? withGammaProfile(bytes) : undefined;
  // A JPEG without its end marker: with one appended, a whole picture decodes without a warning and a
  // cut one still warns of a premature end (refused as incomplete, judged on the bytes as sent).
  const input = profiled ?? (probe.format === "jpeg" && mayLackOnlyEoi(bytes) ? withEoi(bytes) : bytes);
  const image = sharp(input, { limitInputPixels: limits.maxPixels, failOn: "warning", ...frame }).rotate();
  if (!probe.profile && !profiled) return image;
  // sharp converts 16-bit RGB through its profile into Display P3 (its working space for 16 bits), and
  // on to sRGB only when asked for an output profile: else P3 values would be taken for sRGB ones.
  if (probe.space === "rgb16") return image.withIccProfile("srgb");
  // 16-bit grey it does not convert at all; taken to 8 bits at the pipeline's start, it does (the
  // result is 8-bit either way).
  if (probe.space === "grey16") return image.pipelineColourspace("b-w");
  return image;
}

/** ISO/IEC 23091-2's colour primaries code of P3 with D65 white: Display P3, as phones tag wide-gamut photos. */
const P3_D65 = 12;

let displayP3: Promise<Uint8Array> | undefined;
/** libvips' built-in Display P3 profile, as the ICC bytes it embeds in an image. */
function displayP3Profile(): Promise<Uint8Array> {
  displayP3 ??= sharp({ create: { width: 1, height: 1, channels: 3, background: "#000" } })
    .withIccProfile("p3")
    .png()
    .toBuffer()
    .then(async (png) => {
      const { icc } = await sharp(png).metadata();
      if (!icc) throw new Error("libvips embedded no Display P3 profile");
      return new Uint8Array(icc);
    });
  return displayP3;
}

/** A HEIF (AV1) image's primary picture as 8-bit RGBA, its coded values as they are (no profile applied). */
async function rgbaOf(bytes: Uint8Array, limits: ImageLimits): Promise<DecodedHeif> {
  const { data, info } = await sharp(bytes, { limitInputPixels: limits.maxPixels, failOn: "warning" })
    .toColourspace("srgb") // 10- and 12-bit pictures to 8 bits
    .ensureAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  return {
    width: info.width,
    height: info.height,
    rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/** `jpeg` with an end-of-image marker appended. */
function withEoi(jpeg: Uint8Array): Uint8Array {
  const out = new Uint8Array(jpeg.byteLength + 2);
  out.set(jpeg);
  out.set([0xff, 0xd9], jpeg.byteLength);
  return out;
}

/** Runs `pipeline` (the end of a decode); a decoder failure becomes the sender's reason, its text the detail. */
export async function decoded<T>(
  bytes: Uint8Array,
  probe: ImageProbe,
  pipeline: () => Promise<T>,
): Promise<T> {
  try {
    return await pipeline();
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    throw new ImageInputError(failureText(bytes, probe.format), { detail: (err as Error).message });
  }
}

export type ImageSize = number | { width: number; height: number };

export interface LoadedImage {
  /** [1, 3, height, width], RGB, in [-1, 1]. */
  tensor: Float32Array;
  width: number;
  height: number;
  source: ImageProbe;
}

/** A plain size as a working shape whose content is all of it. */
function wholeShape(size: ImageSize): WorkingShape {
  const { width, height } = typeof size === "number" ? { width: size, height: size } : size;
  for (const [name, v] of [
    ["width", width],
    ["height", height],
  ] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 4096) {
      throw new RangeError(`image ${name} must be a whole number of pixels from 1 to 4096, got ${v}`);
    }
  }
  return { width, height, content: { left: 0, top: 0, width, height } };
}

/**
 * Decodes `bytes` to the model's input: oriented, sRGB, alpha on white, resized with lanczos3 to cover
 * the content box of `shape` (centre-cropped: at most a rounding pixel when the box has the photo's
 * aspect ratio), mirrored into the padding around it. `size` is the plain form: exactly that size, all
 * content (512² by default).
 */
export async function loadImage(
  bytes: Uint8Array,
  options: { size?: ImageSize; shape?: WorkingShape; limits?: ImageLimits } = {},
): Promise<LoadedImage> {
  const limits = options.limits ?? DEFAULT_IMAGE_LIMITS;
  const { width, height, content } = options.shape ?? wholeShape(options.size ?? 512);
  const source = await probeImage(bytes, limits);
  const raw: { data: Buffer; info: OutputInfo } = await decoded(bytes, source, async () =>
    (await decodeImage(bytes, source, limits))
      .flatten({ background: "#ffffff" })
      .resize(content.width, content.height, { fit: "cover", position: "centre", kernel: "lanczos3" })
      .extend({
        top: content.top,
        left: content.left,
        bottom: height - content.top - content.height,
        right: width - content.left - content.width,
        extendWith: "mirror",
      })
      .toColourspace("srgb")
      .removeAlpha()
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true }),
  );
  const { data, info } = raw;
  if (info.channels !== 3 || info.width !== width || info.height !== height) {
    throw new Error(
      `sharp returned ${info.width}×${info.height}×${info.channels}, expected ${width}×${height}×3`,
    );
  }
  const plane = width * height;
  const tensor = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) tensor[c * plane + p] = (data[p * 3 + c] as number) / 127.5 - 1;
  }
  return { tensor, width, height, source };
}

export interface LoadedPhoto extends LoadedImage {
  /** The working shape it was loaded at (src/spec/shape.ts). */
  shape: WorkingShape;
}

/**
 * A photo at its working shape on a model: the equal-area rule, or the `requested` size. Refuses, with
 * a message naming the limit, what probeImage's `limits` or the shape rule (SHAPE_LIMITS) cannot take.
 */
export async function loadPhoto(
  bytes: Uint8Array,
  model: ModelShape,
  options: { requested?: Size; limits?: ImageLimits } = {},
): Promise<LoadedPhoto> {
  const probe = await probeImage(bytes, options.limits ?? DEFAULT_IMAGE_LIMITS);
  const shape = workingShape(probe, model, options.requested);
  return { ...(await loadImage(bytes, { shape, limits: options.limits })), shape };
}

/** A photo as the pipelines take it (Imagic's TrainArgs, Photoswap's SwapEditArgs). */
export interface PhotoArgs {
  /** [1, 3, height, width] in [-1, 1], at the working shape. */
  image: Float32Array;
  height: number;
  width: number;
  /** Where the photo's own pixels are; results are cropped to it. */
  content: Box;
}

export function photoArgs(photo: LoadedPhoto): PhotoArgs {
  const { height, width, content } = photo.shape;
  return { image: photo.tensor, height, width, content };
}

/** The `box` of a [3, height, width] (or [1, 3, …]) image, as [3, box.height, box.width]. */
export function cropImage(image: Float32Array, size: Size, box: Box): Float32Array {
  const { width, height } = size;
  if (image.length !== 3 * width * height)
    throw new RangeError(`cropImage: ${image.length} values for 3×${height}×${width}`);
  if (box.left < 0 || box.top < 0 || box.left + box.width > width || box.top + box.height > height)
    throw new RangeError(`cropImage: box ${JSON.stringify(box)} is outside ${width}×${height}`);
  if (box.width === width && box.height === height) return image;
  const out = new Float32Array(3 * box.width * box.height);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < box.height; y++) {
      const from = (c * height + box.top + y) * width + box.left;
      out.set(image.subarray(from, from + box.width), (c * box.height + y) * box.width);
    }
  }
  return out;
}

/** A [3, H, W] or [1, 3, H, W] tensor in [-1, 1] as a PNG (values clamped; round((x / 2 + 0.5) · 255)). */
export async function tensorToPng(data: Float32Array, shape: readonly number[]): Promise<Buffer> {
  const dims = shape.length === 4 && shape[0] === 1 ? shape.slice(1) : shape;
  const [channels, height, width] = dims as [number, number, number];
  if (dims.length !== 3 || channels !== 3 || data.length !== 3 * height * width) {
    throw new RangeError(
      `tensorToPng needs a [3, H, W] or [1, 3, H, W] tensor of ${data.length} values, got [${shape.join(", ")}]`,
    );
  }
  const plane = width * height;
  const rgb = Buffer.alloc(3 * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(1, Math.max(0, (data[c * plane + p] as number) / 2 + 0.5));
      rgb[p * 3 + c] = Math.round(v * 255);
    }
  }
  return sharp(rgb, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}
