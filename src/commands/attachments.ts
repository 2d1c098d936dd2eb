// Photo attachments are checked twice: before download from what the platform declares (type, size),
// so a 200 MB video costs nothing, and after download by the engine's intake (src/engine/intake):
// probeImage's limits on format, animation, dimensions, megapixels and JPEG scans, then the whole
// conversion to the PNG that is stored and sent to the engine, in a decoder process with a deadline
// (limits.decodeTimeoutMs), plus the colour space and the edits' shape limits. So a file that lies
// about its type, is corrupt, or takes too long to decode is refused before any job starts, and an
// accepted one is known to convert. Every message names the attachment and the limit in the sender's
// words; what the decoder said goes to the log.
import { ImageInputError } from "../engine/image.js";
import { describeMediaType, formatList } from "../engine/intake/kinds.js";
import { decoderPool } from "../engine/intake/pool.js";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import { formatBytes } from "../queue/blobs.js";
import { checkPhotoShape } from "../spec/shape.js";
import { COLOUR_SPACES, describeColourSpace, type ImageLimits } from "../spec/upload.js";
import type { ChatAdapter, IncomingAttachment } from "./chat.js";

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

const log = childLogger("uploads");
const describe = (a: IncomingAttachment) => `\`${a.option}\` (${a.filename})`;

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
      `${describe(attachment)} is ${declared ? describeMediaType(declared) : "not an image"}; send a ${formatList(limits.formats)} image`,
    );
  }
  if (attachment.size > limits.maxBytes) {
    throw new UserFacingError(
      `${describe(attachment)} is ${formatBytes(attachment.size)}; the limit is ${formatBytes(limits.maxBytes)}`,
    );
  }
}

/**
 * Downloads, checks and converts the attachment; returns the photo as the engine will read it (intake/
 * convert.ts: a PNG of every pixel, oriented, sRGB) — what is stored and sent, never the sender's bytes.
 */
/**
 * A download's bytes, refused as soon as they pass `maxBytes`, whatever size the platform declared: at
 * most maxBytes + 1 are read. `what` names the attachment as its sender knows it.
 */
export async function readAtMost(
  body: AsyncIterable<Uint8Array> & { cancel(): Promise<void> },
  maxBytes: number,
  what: string,
): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of body) {
    chunks.push(chunk);
    total += chunk.byteLength;
    if (total > maxBytes) {
      await body.cancel().catch(() => {});
      throw new UserFacingError(`${what} is larger than ${formatBytes(maxBytes)}, the limit`);
    }
  }
  return Buffer.concat(chunks);
}

export async function fetchImage(
  adapter: ChatAdapter,
  attachment: IncomingAttachment,
  limits: ImageLimits,
  sender?: string,
): Promise<Uint8Array> {
  // The adapter refuses more than maxBytes, whatever size the platform declared.
  const bytes = await adapter.download(attachment, limits.maxBytes);
  try {
    const { bytes: photo, probe } = await decoderPool().convert(bytes, limits, sender);
    if (!COLOUR_SPACES.has(probe.space)) {
      throw new ImageInputError(
        `The image uses ${describeColourSpace(probe.space)}; send an sRGB, greyscale or CMYK image.`,
      );
    }
    // The working-size rule's limits (aspect ratio), before any job waits in line.
    checkPhotoShape(probe, describe(attachment));
    return photo;
  } catch (error) {
    if (!(error instanceof ImageInputError)) throw error;
    log.info(
      {
        option: attachment.option,
        filename: attachment.filename,
        refusal: error.message,
        detail: error.detail,
      },
      "upload refused",
    );
    // The loader speaks of "the image"; name the attachment instead.
    const about = /^(?:The image|That file) (.*?)\.?$/.exec(error.message)?.[1];
    throw new UserFacingError(
      about
        ? `${describe(attachment)} ${about}`
        : `${describe(attachment)}: ${error.message.replace(/\.$/, "")}`,
    );
  }
}
