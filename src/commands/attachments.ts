// Photo attachments are checked twice: before download from what the platform declares (type, size),
// so a 200 MB video costs nothing, and after download by decoding it (sharp), so a file
// that lies about its type, is animated, too large in pixels or in an odd colour space is refused with
// a message naming the attachment and the limit. (checkImageBytes is the Imagic pipeline's own check.)
import sharp from "sharp";
import { checkImageBytes, IMAGE_LIMITS } from "../engine/pipelines/imagic-input.js";
import { UserFacingError } from "../errors.js";
import { formatBytes } from "../queue/blobs.js";
import type { ChatAdapter, IncomingAttachment } from "./chat.js";

/** MIME types we accept, with the name users know them by. */
export const IMAGE_TYPES: Readonly<Record<string, string>> = {
  "image/png": "PNG",
  "image/jpeg": "JPEG",
  "image/webp": "WebP",
  "image/gif": "GIF",
};
const EXTENSIONS: Readonly<Record<string, string>> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  webp: "image/webp",
  gif: "image/gif",
};
/** sharp's names of the colour spaces it converts to sRGB faithfully. */
const COLOUR_SPACES = new Set(["srgb", "rgb", "rgb16", "b-w", "grey16", "cmyk", "scrgb"]);

export interface ImageLimits {
  maxBytes: number;
  maxPixels: number;
  minSide: number;
}

export const DEFAULT_IMAGE_LIMITS: Omit<ImageLimits, "maxBytes"> = {
  maxPixels: IMAGE_LIMITS.pixels,
  minSide: IMAGE_LIMITS.minSide,
};

const typeNames = () => [...new Set(Object.values(IMAGE_TYPES))].join(", ");
const describe = (a: IncomingAttachment) => `\`${a.option}\` (${a.filename})`;

/** The checks that need no download. */
export function checkDeclared(attachment: IncomingAttachment, limits: ImageLimits): void {
  const declared = attachment.contentType?.split(";")[0]?.trim().toLowerCase();
  const byExtension = EXTENSIONS[attachment.filename.split(".").pop()?.toLowerCase() ?? ""];
  const type = declared || byExtension;
  if (!type || !IMAGE_TYPES[type]) {
    throw new UserFacingError(
      `${describe(attachment)} is ${declared ? `a ${declared} file` : "not an image"}; send a ${typeNames()} image`,
    );
  }
  if (attachment.size > limits.maxBytes) {
    throw new UserFacingError(
      `${describe(attachment)} is ${formatBytes(attachment.size)}; the limit is ${formatBytes(limits.maxBytes)}`,
    );
  }
}

/** Downloads and decodes the attachment; returns the bytes when they are a usable still photo. */
export async function fetchImage(
  adapter: ChatAdapter,
  attachment: IncomingAttachment,
  limits: ImageLimits,
): Promise<Uint8Array> {
  // The adapter refuses more than maxBytes, whatever size the platform declared.
  const bytes = await adapter.download(attachment, limits.maxBytes);
  // Decodes it fully within the byte, pixel and side limits (the same checks the Imagic pipeline makes).
  const { format } = await checkImageBytes(bytes, describe(attachment), {
    bytes: limits.maxBytes,
    pixels: limits.maxPixels,
    minSide: limits.minSide,
  });
  if (!IMAGE_TYPES[`image/${format}`]) {
    throw new UserFacingError(
      `${describe(attachment)} is a ${format.toUpperCase()} image; send a ${typeNames()} image`,
    );
  }
  const { pages = 1, space } = await sharp(bytes).metadata();
  if (pages > 1) {
    throw new UserFacingError(`${describe(attachment)} is animated (${pages} frames); send a still image`);
  }
  if (space && !COLOUR_SPACES.has(space)) {
    throw new UserFacingError(
      `${describe(attachment)} uses the ${space} colour space; send an sRGB, greyscale or CMYK image`,
    );
  }
  return bytes;
}
