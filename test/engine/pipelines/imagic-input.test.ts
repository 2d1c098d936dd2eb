import { readFileSync } from "node:fs";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { checkImageBytes, IMAGE_LIMITS } from "../../../src/engine/pipelines/imagic-input.js";

const chelsea = readFileSync(new URL("../../fixtures/images/chelsea.png", import.meta.url));

describe("checkImageBytes", () => {
  it("accepts a real photo and reports its format and size", async () => {
    expect(await checkImageBytes(chelsea, "chelsea.png")).toEqual({ format: "png", width: 451, height: 300 });
  });

  it("refuses what is not an image, naming the input", async () => {
    await expect(checkImageBytes(new TextEncoder().encode("hello"), "--image notes.txt")).rejects.toThrow(
      "--image notes.txt is not an image that can be read",
    );
    await expect(checkImageBytes(new Uint8Array(0), "the photo")).rejects.toThrow(
      "the photo is empty (0 bytes)",
    );
  });

  it("refuses a truncated file that has a valid header", async () => {
    await expect(checkImageBytes(chelsea.subarray(0, chelsea.length / 2), "half.png")).rejects.toThrow(
      /half.png could not be decoded/,
    );
  });

  it("refuses huge images by bytes and by pixels, and tiny ones, with the limit", async () => {
    const big = await sharp({ create: { width: 8000, height: 6000, channels: 3, background: "#888" } })
      .png()
      .toBuffer();
    await expect(checkImageBytes(big, "big.png")).rejects.toThrow(
      "big.png is 8000×6000 (48.0 MP); the limit is 40 MP",
    );
    await expect(checkImageBytes(chelsea, "chelsea.png", { ...IMAGE_LIMITS, bytes: 1000 })).rejects.toThrow(
      /chelsea.png is \d+\.\d KiB; the limit is 1000 bytes/,
    );
    const tiny = await sharp({ create: { width: 40, height: 300, channels: 3, background: "#888" } })
      .png()
      .toBuffer();
    await expect(checkImageBytes(tiny, "tiny.png")).rejects.toThrow(
      "tiny.png is 40×300; each side must be at least 64 pixels",
    );
  });
});
