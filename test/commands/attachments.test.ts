import { readFileSync } from "node:fs";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { checkDeclared, fetchImage } from "../../src/commands/attachments.js";
import type { IncomingAttachment } from "../../src/commands/chat.js";
import { chatImageLimits } from "../../src/spec/upload.js";
import { PHOTO } from "../queue/support/setup.js";
import { MemoryAdapter } from "./memory-adapter.js";

const limits = chatImageLimits(1024 * 1024);
const attachment = (filename: string, contentType?: string, size = 1000): IncomingAttachment => ({
  option: "image",
  filename,
  contentType,
  size,
  url: `memory://${filename}`,
});

describe("checkDeclared", () => {
  it("goes by the declared type, or by the extension when none is declared", () => {
    expect(() => checkDeclared(attachment("a.png", "image/png"), limits)).not.toThrow();
    expect(() => checkDeclared(attachment("a.JPG"), limits)).not.toThrow();
    expect(() => checkDeclared(attachment("a.bin"), limits)).toThrow(
      "`image` (a.bin) is not an image; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
    );
    // Declared types in words, with the right article.
    for (const [type, words] of [
      ["image/svg+xml", "an SVG image"],
      ["image/bmp", "a BMP image"],
      ["video/mp4", "an MP4 video"],
      ["application/pdf", "a PDF document"],
      ["text/plain", "a text file"],
      ["application/octet-stream", "a file that is not an image"],
    ]) {
      expect(() => checkDeclared(attachment("a.png", type), limits)).toThrow(
        `\`image\` (a.png) is ${words}; send a JPEG`,
      );
    }
    expect(() => checkDeclared(attachment("IMG_0001.HEIC", "image/heic"), limits)).not.toThrow();
  });

  it("refuses a declared size over the limit before downloading", () => {
    expect(() => checkDeclared(attachment("a.png", "image/png", 2 * 1024 * 1024), limits)).toThrow(
      "`image` (a.png) is 2.0 MiB; the limit is 1.0 MiB",
    );
  });
});

describe("fetchImage", () => {
  const fetch = async (name: string, bytes: Uint8Array) => {
    const adapter = new MemoryAdapter();
    adapter.files.set(`memory://${name}`, bytes);
    return fetchImage(adapter, attachment(name), limits);
  };

  it("accepts a photo, CMYK and iPhone HEIC included, as the PNG the engine will read", async () => {
    const stored = await fetch("cat.png", PHOTO);
    expect((await sharp(stored).metadata()).format).toBe("png");
    const [got, want] = await Promise.all(
      [stored, PHOTO].map((b) => sharp(b).removeAlpha().raw().toBuffer()),
    );
    expect(Buffer.compare(got as Buffer, want as Buffer)).toBe(0);
    const cmyk = await sharp(PHOTO).toColourspace("cmyk").jpeg().toBuffer();
    expect((await sharp(cmyk).metadata()).space).toBe("cmyk");
    expect((await sharp(await fetch("cmyk.jpg", cmyk)).metadata()).space).toBe("srgb");
    const heic = readFileSync("test/fixtures/images/chelsea.heic");
    const fromHeic = await sharp(await fetch("IMG_0001.HEIC", heic)).metadata();
    expect([fromHeic.format, fromHeic.width, fromHeic.height]).toEqual(["png", 192, 128]);
  });

  it("refuses an odd colour space and a truncated file, naming the attachment", async () => {
    // A CIELAB TIFF (as Photoshop writes them); sharp keeps LAB only with a 16-bit pipeline, uncompressed.
    const lab = await sharp(PHOTO)
      .resize(128)
      .pipelineColourspace("rgb16")
      .toColourspace("lab")
      .tiff({ compression: "none" })
      .toBuffer();
    expect((await sharp(lab).metadata()).space).toBe("lab");
    await expect(fetch("lab.tif", lab)).rejects.toThrow(
      "`image` (lab.tif) uses the CIELAB colour space; send an sRGB, greyscale or CMYK image",
    );
    const truncated = PHOTO.subarray(0, Math.floor(PHOTO.byteLength / 2));
    await expect(fetch("cut.png", truncated)).rejects.toThrow(
      "`image` (cut.png) is incomplete: the file ends before the picture does (the upload was probably cut short); send it again",
    );
    const bmp = Uint8Array.from([0x42, 0x4d, ...new Array(60).fill(0)]);
    await expect(fetch("photo.png", bmp)).rejects.toThrow(
      "`image` (photo.png) is a BMP image; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
    );
  });

  it("refuses a photo beyond the 4:1 aspect ratio an edit takes, naming the attachment and the limit", async () => {
    const panorama = await sharp(PHOTO).resize(900, 200, { fit: "fill" }).png().toBuffer();
    await expect(fetch("pano.png", panorama)).rejects.toThrow(
      "`image` (pano.png) is 900×200 pixels, an aspect ratio of 4.50:1; the limit is 4:1 — crop it closer to what should change",
    );
    // One pixel over: the ratio shows it (4.00:1 would read as within the limit).
    const justOver = await sharp(PHOTO).resize(1001, 250, { fit: "fill" }).png().toBuffer();
    await expect(fetch("over.png", justOver)).rejects.toThrow(
      "`image` (over.png) is 1001×250 pixels, an aspect ratio of 4.004:1; the limit is 4:1 — crop it closer to what should change",
    );
  });
});
