import { readFileSync } from "node:fs";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { progressiveScanBomb, truncated } from "../../../src/cli/bench/hostile-images.js";
import { jpegStructure } from "../../../src/engine/intake/jpeg.js";

const photo = sharp(readFileSync("test/fixtures/images/coffee.png"));

describe("jpegStructure", () => {
  it("counts the scans encoders write: 1 baseline, libjpeg's 10, mozjpeg's few", async () => {
    expect(jpegStructure(await photo.clone().jpeg().toBuffer())).toEqual({
      scans: 1,
      frame: 0xc0,
      precision: 8,
      complete: true,
    });
    expect(jpegStructure(await photo.clone().jpeg({ progressive: true }).toBuffer())).toEqual({
      scans: 10,
      frame: 0xc2,
      precision: 8,
      complete: true,
    });
    const mozjpeg = jpegStructure(await photo.clone().jpeg({ mozjpeg: true }).toBuffer()).scans;
    expect(mozjpeg).toBeGreaterThan(1);
    expect(mozjpeg).toBeLessThanOrEqual(12);
  });

  it("counts every scan of a scan bomb and sees a file cut short", async () => {
    const bomb = progressiveScanBomb(256, 256);
    expect(jpegStructure(bomb.bytes)).toEqual({
      scans: bomb.scans,
      frame: 0xc2,
      precision: 8,
      complete: true,
    });
    // Stuffed 0xff bytes inside the entropy-coded data are not segments.
    const stuffed = await photo.clone().jpeg({ quality: 100 }).toBuffer();
    expect(stuffed.includes(Buffer.from([0xff, 0x00]))).toBe(true);
    expect(jpegStructure(stuffed).scans).toBe(1);
    expect(jpegStructure(truncated(stuffed, 0.5))).toMatchObject({ scans: 1, complete: false });
    expect(jpegStructure(Uint8Array.from([0x89, 0x50]))).toEqual({ scans: 0, complete: false });
  });
});
