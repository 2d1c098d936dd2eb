// What the bot keeps of an accepted upload: the photo itself decoded once — every pixel, oriented,
// 8-bit sRGB on white — and stored as a PNG. Doing the whole conversion to accept a file is what makes
// "accepted" mean "converts": a check that decodes less (a 64-pixel preview stops reading a portrait
// photo at its centre crop) lets through files whose bottom rows or missing Huffman tables fail later
// in the engine. The engine then decodes only PNGs this code wrote, never the sender's bytes.
import sharp from "sharp";
import { type ImageLimits, STORED_PHOTO_MAX_PIXELS } from "../../spec/upload.js";
import { decoded, decodeImage, type ImageProbe, probeImage } from "../image.js";

export interface AcceptedPhoto {
  /** The photo, 8-bit sRGB without alpha, at most STORED_PHOTO_MAX_PIXELS (src/spec/upload.ts): a PNG (a JPEG at quality 95 where the PNG would exceed limits.maxBytes). */
  bytes: Uint8Array;
  width: number;
  height: number;
  /** What the upload was. */
  probe: ImageProbe;
}

/** Checks (probeImage), decodes and converts an upload; throws ImageInputError in the sender's words. */
export async function convertPhoto(bytes: Uint8Array, limits: ImageLimits): Promise<AcceptedPhoto> {
  const probe = await probeImage(bytes, limits);
  const scale = Math.min(1, Math.sqrt(STORED_PHOTO_MAX_PIXELS / probe.pixels));
  const width = Math.max(1, Math.round(probe.width * scale));
  const height = Math.max(1, Math.round(probe.height * scale));
  const { data, info } = await decoded(bytes, probe, async () =>
    (await decodeImage(bytes, probe, limits))
      .flatten({ background: "#ffffff" })
      .resize(width, height, { fit: "fill", kernel: "lanczos3" })
      .toColourspace("srgb")
      .removeAlpha()
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true }),
  );
  const pixels = () => sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } });
  let encoded = await pixels().png().toBuffer();
  // A noisy photo's PNG can outgrow the byte limit its JPEG met: then a JPEG, of our own making.
  if (encoded.byteLength > limits.maxBytes) {
    encoded = await pixels().jpeg({ quality: 95, chromaSubsampling: "4:4:4" }).toBuffer();
  }
  return { bytes: new Uint8Array(encoded), width: info.width, height: info.height, probe };
}
