import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { chatImageLimits, checkDeclared, fetchImage } from "../../src/commands/attachments.js";
import type { IncomingAttachment } from "../../src/commands/chat.js";
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
      "`image` (a.bin) is not an image; send a JPEG, PNG",
    );
    expect(() => checkDeclared(attachment("a.png", "image/svg+xml"), limits)).toThrow(
      "is a image/svg+xml file",
    );
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

  it("accepts a photo, CMYK included", async () => {
    expect(await fetch("cat.png", PHOTO)).toBe(PHOTO);
    const cmyk = await sharp(PHOTO).toColourspace("cmyk").jpeg().toBuffer();
    expect((await sharp(cmyk).metadata()).space).toBe("cmyk");
    await expect(fetch("cmyk.jpg", cmyk)).resolves.toBe(cmyk);
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
      /^`image` \(lab\.tif\) uses the lab\w* colour space; send an sRGB, greyscale or CMYK image$/,
    );
    const truncated = PHOTO.subarray(0, Math.floor(PHOTO.byteLength / 2));
    await expect(fetch("cut.png", truncated)).rejects.toThrow(/^`image` \(cut\.png\) could not be decoded/);
  });

  it("refuses a photo beyond the 4:1 aspect ratio an edit takes, naming the attachment and the limit", async () => {
    const panorama = await sharp(PHOTO).resize(900, 200, { fit: "fill" }).png().toBuffer();
    await expect(fetch("pano.png", panorama)).rejects.toThrow(
      "`image` (pano.png) is 900×200 pixels, an aspect ratio of 4.50:1; the limit is 4:1 — crop it closer to what should change",
    );
  });
});
