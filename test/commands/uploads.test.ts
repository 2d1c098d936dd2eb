import { randomBytes } from "node:crypto";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { fitUpload } from "../../src/commands/uploads.js";

const noisyPng = () =>
  sharp(randomBytes(512 * 512 * 3), { raw: { width: 512, height: 512, channels: 3 } })
    .png()
    .toBuffer();

describe("fitUpload", () => {
  it("leaves a file that fits alone", async () => {
    const file = { name: "grid.png", bytes: new Uint8Array(10) };
    expect(await fitUpload(file, 10)).toBe(file);
  });

  it("sends a PNG over the limit as a JPEG under it", async () => {
    const png = await noisyPng();
    expect(png.byteLength).toBeGreaterThan(700_000);
    const fitted = await fitUpload({ name: "grid.png", bytes: png }, 400_000);
    expect(fitted.name).toBe("grid.jpg");
    expect(fitted.bytes.byteLength).toBeLessThanOrEqual(400_000);
    expect((await sharp(fitted.bytes).metadata()).width).toBe(512);
  });

  it("names the file and the limit when even a JPEG does not fit", async () => {
    await expect(fitUpload({ name: "grid.png", bytes: await noisyPng() }, 1000)).rejects.toThrow(
      /grid\.png is [\d.]+ KiB and does not fit the 1000 B upload limit even as a JPEG/,
    );
  });
});
