/**
 * The photo an Imagic request brings, checked before anything starts: it must be an image sharp can
 * decode, within the byte and pixel limits, and not too small to edit.
 */
import sharp, { type Metadata } from "sharp";
import { UserFacingError } from "../../errors.js";

export const IMAGE_LIMITS = {
  /** The blob store's default cap (BLOB_MAX_BYTES). */
  bytes: 20 * 1024 ** 2,
  /** 40 megapixels: a phone photo is 12–50 MP; the working size is 512², so more only costs decoding. */
  pixels: 40_000_000,
  minSide: 64,
} as const;

function sizeText(n: number): string {
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

export async function checkImageBytes(
  bytes: Uint8Array,
  what: string,
  limits: { bytes: number; pixels: number; minSide: number } = IMAGE_LIMITS,
): Promise<{ format: string; width: number; height: number }> {
  if (bytes.length === 0) throw new UserFacingError(`${what} is empty (0 bytes)`);
  if (bytes.length > limits.bytes) {
    throw new UserFacingError(`${what} is ${sizeText(bytes.length)}; the limit is ${sizeText(limits.bytes)}`);
  }
  let meta: Metadata;
  try {
    // limitInputPixels: false here, so a huge image is reported by size below rather than as a decode error.
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch {
    throw new UserFacingError(
      `${what} is not an image that can be read (JPEG, PNG, WebP, GIF, TIFF, AVIF, HEIF)`,
    );
  }
  const { format, width, height } = meta;
  if (!format || !width || !height) throw new UserFacingError(`${what} is not an image that can be read`);
  if (width * height > limits.pixels) {
    throw new UserFacingError(
      `${what} is ${width}×${height} (${((width * height) / 1e6).toFixed(1)} MP); the limit is ${limits.pixels / 1e6} MP`,
    );
  }
  if (Math.min(width, height) < limits.minSide) {
    throw new UserFacingError(
      `${what} is ${width}×${height}; each side must be at least ${limits.minSide} pixels`,
    );
  }
  // Decode fully once: a truncated or corrupt file passes the header check but fails here.
  try {
    await sharp(bytes, { limitInputPixels: limits.pixels }).raw().toBuffer();
  } catch (e) {
    throw new UserFacingError(`${what} could not be decoded: ${(e as Error).message}`);
  }
  return { format, width, height };
}
