// Photo attachments are checked twice: before download from what the platform declares (type, size),
// so a 200 MB video costs nothing, and after download by the engine's own image loader (probeImage's
// limits on format, animation, dimensions and megapixels, then a full decode with sharp), plus the
// colour space, so a file that lies about its type or is corrupt is refused before any job starts.
// Every message names the attachment and the limit.
import { DEFAULT_IMAGE_LIMITS, ImageInputError, type ImageLimits, loadImage } from "../engine/image.js";
import { UserFacingError } from "../errors.js";
import { formatBytes } from "../queue/blobs.js";
import { checkPhotoShape, SHAPE_LIMITS } from "../spec/shape.js";
import type { ChatAdapter, IncomingAttachment } from "./chat.js";

export type { ImageLimits };

/** MIME types by the format names the image loader accepts. */
const MIME_TYPES: Readonly<Record<string, readonly string[]>> = {
  jpeg: ["image/jpeg", "image/jpg"],
  png: ["image/png"],
  webp: ["image/webp"],
  gif: ["image/gif"],
  tiff: ["image/tiff"],
  heif: ["image/heif", "image/heic"],
  avif: ["image/avif"],
};
const EXTENSIONS: Readonly<Record<string, string>> = {
  jpg: "jpeg",
  jpeg: "jpeg",
  png: "png",
  webp: "webp",
  gif: "gif",
  tif: "tiff",
  tiff: "tiff",
  heic: "heif",
  heif: "heif",
  avif: "avif",
};
/** libvips colour spaces that the loader converts to sRGB faithfully. */
const COLOUR_SPACES = new Set(["srgb", "rgb", "rgb16", "b-w", "grey16", "cmyk", "scrgb"]);

/** The bot's limits: the loader's, with the blob store's byte limit and the edits' smallest side. */
export function chatImageLimits(maxBytes: number, overrides: Partial<ImageLimits> = {}): ImageLimits {
  return { ...DEFAULT_IMAGE_LIMITS, minSide: SHAPE_LIMITS.minPhotoSide, maxBytes, ...overrides };
}

const describe = (a: IncomingAttachment) => `\`${a.option}\` (${a.filename})`;
const formatList = (limits: ImageLimits) => limits.formats.map((f) => f.toUpperCase()).join(", ");

/** The checks that need no download. */
export function checkDeclared(attachment: IncomingAttachment, limits: ImageLimits): void {
  const declared = attachment.contentType?.split(";")[0]?.trim().toLowerCase();
  const accepted = limits.formats.flatMap((f) => MIME_TYPES[f] ?? []);
  const byExtension = EXTENSIONS[attachment.filename.split(".").pop()?.toLowerCase() ?? ""];
  const ok = declared
    ? accepted.includes(declared)
    : byExtension !== undefined && limits.formats.includes(byExtension);
  if (!ok) {
    throw new UserFacingError(
      `${describe(attachment)} is ${declared ? `a ${declared} file` : "not an image"}; send a ${formatList(limits)} image`,
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
  try {
    // The smallest input size: enough to decode every pixel once without building a large tensor.
    const { source } = await loadImage(bytes, { size: 64, limits });
    if (!COLOUR_SPACES.has(source.space)) {
      throw new ImageInputError(
        `The image uses the ${source.space} colour space; send an sRGB, greyscale or CMYK image.`,
      );
    }
    // The working-size rule's limits (aspect ratio), before any job waits in line.
    checkPhotoShape(source, describe(attachment));
  } catch (error) {
    if (!(error instanceof ImageInputError)) throw error;
    // The loader speaks of "the image"; name the attachment instead.
    const about = /^(?:The image|That file) (.*?)\.?$/.exec(error.message)?.[1];
    throw new UserFacingError(
      about
        ? `${describe(attachment)} ${about}`
        : `${describe(attachment)}: ${error.message.replace(/\.$/, "")}`,
    );
  }
  return bytes;
}
