// Result images must fit the platform's upload limit (Discord: 10 MiB per file for bots without boosts).
// A PNG that does not fit goes out as a JPEG at decreasing quality: a visible image beats an error.
import sharp from "sharp";
import { UserFacingError } from "../errors.js";
import { formatBytes } from "../queue/blobs.js";
import type { ImageFile } from "./chat.js";

const JPEG_QUALITIES = [92, 85, 75, 60];

export async function fitUpload(file: ImageFile, maxBytes: number): Promise<ImageFile> {
  if (file.bytes.byteLength <= maxBytes) return file;
  const stem = file.name.replace(/\.[^.]+$/, "");
  for (const quality of JPEG_QUALITIES) {
    const bytes = await sharp(file.bytes)
      .flatten({ background: "#ffffff" })
      .jpeg({ quality, mozjpeg: true })
      .toBuffer();
    if (bytes.byteLength <= maxBytes) return { name: `${stem}.jpg`, bytes };
  }
  throw new UserFacingError(
    `${file.name} is ${formatBytes(file.bytes.byteLength)} and does not fit the ${formatBytes(maxBytes)} upload limit even as a JPEG`,
  );
}
