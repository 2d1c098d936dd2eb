import { readFileSync } from "node:fs";
import { crc32 } from "node:zlib";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import {
  cropImage,
  ImageInputError,
  loadImage,
  loadPhoto,
  probeImage,
  tensorToPng,
} from "../../src/engine/image.js";
import { DEFAULT_IMAGE_LIMITS } from "../../src/spec/upload.js";

const photo = (name: string) => new Uint8Array(readFileSync(`test/fixtures/images/${name}`));

/** An 8-bit RGB(A) image from a per-pixel colour function. */
function synth(width: number, height: number, channels: 3 | 4, colour: (x: number, y: number) => number[]) {
  const data = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) data.set(colour(x, y), (y * width + x) * channels);
  }
  return sharp(data, { raw: { width, height, channels } });
}

/** The RGB value of the loaded tensor at (x, y), back in 0–255. */
function pixel(t: { tensor: Float32Array; width: number; height: number }, x: number, y: number): number[] {
  const plane = t.width * t.height;
  return [0, 1, 2].map((c) => Math.round(((t.tensor[c * plane + y * t.width + x] as number) + 1) * 127.5));
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ImageInputError);
  return err as Error;
}

/** A PNG whose header declares width × height but which holds almost no data (a decompression bomb). */
function pngDeclaring(width: number, height: number): Uint8Array {
  const chunk = (type: string, body: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const typed = Buffer.concat([Buffer.from(type, "ascii"), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(typed));
    return Buffer.concat([len, typed, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return new Uint8Array(
    Buffer.concat([
      signature,
      chunk("IHDR", ihdr),
      chunk("IDAT", Buffer.alloc(16)),
      chunk("IEND", Buffer.alloc(0)),
    ]),
  );
}

describe("loadImage", () => {
  it("maps pixels to [-1, 1] in NCHW order without resampling an image already at the target size", async () => {
    const bytes = photo("astronaut.png");
    const img = await loadImage(bytes, { size: 512 });
    expect(img.source).toMatchObject({ format: "png", width: 512, height: 512, animated: false });
    const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    expect(info.channels).toBe(3);
    const plane = 512 * 512;
    let maxDiff = 0;
    for (let p = 0; p < plane; p += 97) {
      for (let c = 0; c < 3; c++) {
        maxDiff = Math.max(
          maxDiff,
          Math.abs((img.tensor[c * plane + p] as number) - ((data[p * 3 + c] as number) / 127.5 - 1)),
        );
      }
    }
    expect(maxDiff).toBeLessThan(1e-6);
  });

  it("resizes to cover and centre-crops (512 by default)", async () => {
    const cat = await loadImage(photo("chelsea.png"));
    expect([cat.width, cat.height, cat.tensor.length]).toEqual([512, 512, 3 * 512 * 512]);
    expect(cat.tensor.every((v) => v >= -1 && v <= 1)).toBe(true);
    // Thirds red | green | blue, 3:1: covering a square keeps exactly the green middle third.
    const bytes = await synth(300, 100, 3, (x) =>
      x < 100 ? [255, 0, 0] : x < 200 ? [0, 255, 0] : [0, 0, 255],
    )
      .png()
      .toBuffer();
    const img = await loadImage(bytes, { size: 64 });
    // Away from the crop edges (where the resampling kernel reaches the red/blue thirds) it is pure green.
    for (const [x, y] of [
      [8, 0],
      [32, 32],
      [55, 63],
    ] as const) {
      expect(pixel(img, x, y)).toEqual([0, 255, 0]);
    }
    const edge = pixel(img, 0, 32);
    expect(edge[1]).toBeGreaterThan(230);
    const wide = await loadImage(bytes, { size: { width: 192, height: 64 } });
    expect(pixel(wide, 10, 32)).toEqual([255, 0, 0]);
    expect(pixel(wide, 181, 32)).toEqual([0, 0, 255]);
  });

  it("applies the EXIF orientation", async () => {
    // Stored 80×40, left half red, right half blue; orientation 6 displays it rotated 90° clockwise.
    const bytes = await synth(80, 40, 3, (x) => (x < 40 ? [255, 0, 0] : [0, 0, 255]))
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const probe = await probeImage(bytes);
    expect(probe).toMatchObject({ orientation: 6, width: 40, height: 80 });
    const img = await loadImage(bytes, { size: { width: 64, height: 128 } });
    const [top, bottom] = [pixel(img, 32, 16), pixel(img, 32, 112)];
    expect(top[0]).toBeGreaterThan(230);
    expect(top[2]).toBeLessThan(25);
    expect(bottom[2]).toBeGreaterThan(230);
    expect(bottom[0]).toBeLessThan(25);
  });

  it("flattens transparency onto white", async () => {
    const bytes = await synth(64, 64, 4, (x) => (x < 32 ? [255, 0, 0, 255] : [0, 0, 0, 0]))
      .png()
      .toBuffer();
    expect((await probeImage(bytes)).hasAlpha).toBe(true);
    const img = await loadImage(bytes, { size: 64 });
    expect(pixel(img, 8, 8)).toEqual([255, 0, 0]);
    expect(pixel(img, 56, 8)).toEqual([255, 255, 255]);
  });

  it("converts CMYK, ICC-tagged, 16-bit and greyscale input to 8-bit sRGB", async () => {
    const base = () => synth(64, 64, 3, () => [200, 40, 60]);
    const cmyk = await base().toColourspace("cmyk").jpeg({ quality: 100 }).toBuffer();
    expect((await probeImage(cmyk)).space).toBe("cmyk");
    const fromCmyk = pixel(await loadImage(cmyk, { size: 64 }), 32, 32);
    // CMYK → sRGB goes through libvips' default profiles, so the round trip is close, not exact.
    const drift = fromCmyk.map((v, i) => Math.abs(v - ([200, 40, 60][i] as number)));
    expect(Math.max(...drift)).toBeLessThan(24);

    const deep = await base().toColourspace("rgb16").png().toBuffer();
    expect((await probeImage(deep)).space).toBe("rgb16");
    expect(pixel(await loadImage(deep, { size: 64 }), 32, 32)).toEqual([200, 40, 60]);

    // Display-P3-tagged pixels are converted through their ICC profile, back to the sRGB original.
    const p3 = await base().withIccProfile("p3").png().toBuffer();
    const stored = await sharp(p3).keepIccProfile().raw().toBuffer();
    expect(Math.abs((stored[0] as number) - 200)).toBeGreaterThan(10);
    const fromP3 = pixel(await loadImage(p3, { size: 64 }), 32, 32);
    expect(Math.max(...fromP3.map((v, i) => Math.abs(v - ([200, 40, 60][i] as number))))).toBeLessThanOrEqual(
      2,
    );

    const grey = await synth(64, 64, 3, () => [90, 90, 90])
      .toColourspace("b-w")
      .png()
      .toBuffer();
    expect(pixel(await loadImage(grey, { size: 64 }), 5, 5)).toEqual([90, 90, 90]);
  });

  it("reports a truncated file whose header is intact as incomplete, the decoder's words only in the detail", async () => {
    const bytes = photo("coffee.png");
    const cut = bytes.subarray(0, Math.floor(bytes.byteLength / 2));
    expect((await probeImage(cut)).width).toBe(600);
    const error = (await rejection(loadImage(cut))) as ImageInputError;
    expect(error.message).toBe(
      "The image is incomplete: the file ends before the picture does (the upload was probably cut short); send it again.",
    );
    expect(error.detail).toMatch(/png/);
  });

  it("refuses sizes that are not whole numbers of pixels up to 4096", async () => {
    await expect(loadImage(photo("coffee.png"), { size: 5000 })).rejects.toThrow(
      /whole number of pixels from 1 to 4096, got 5000/,
    );
    await expect(loadImage(photo("coffee.png"), { size: { width: 64, height: 0.5 } })).rejects.toThrow(
      /image height must be a whole number/,
    );
  });
});

describe("loadPhoto: the working shape (src/spec/shape.ts) — no crop, no stretch, padding mirrored", () => {
  it("loads coffee.png (600×400) at the fixture's 64×64 with the photo in rows 10…52 and mirrored rows around", async () => {
    const model = { native: { width: 64, height: 64 }, multiple: 64 };
    const img = await loadPhoto(photo("coffee.png"), model);
    expect(img.shape).toEqual({
      width: 64,
      height: 64,
      content: { left: 0, top: 10, width: 64, height: 43 },
    });
    expect([img.width, img.height, img.tensor.length]).toEqual([64, 64, 3 * 64 * 64]);
    expect([img.source.width, img.source.height]).toEqual([600, 400]);
    // The content is the whole photo at 64×43 (a plain lanczos3 resize: nothing cropped, nothing stretched).
    const plain = await sharp(photo("coffee.png")).resize(64, 43, { kernel: "lanczos3" }).raw().toBuffer();
    for (const [x, y] of [
      [0, 0],
      [63, 0],
      [31, 21],
      [0, 42],
      [63, 42],
    ] as const) {
      expect(pixel(img, x, y + 10), `${x},${y}`).toEqual([
        ...plain.subarray((y * 64 + x) * 3, (y * 64 + x) * 3 + 3),
      ]);
    }
    // Padding mirrors the content about its edges: row 9 is row 10's neighbour inside, row 53 likewise.
    for (const x of [0, 17, 40, 63]) {
      expect(pixel(img, x, 9)).toEqual(pixel(img, x, 10));
      expect(pixel(img, x, 0)).toEqual(pixel(img, x, 19));
      expect(pixel(img, x, 53)).toEqual(pixel(img, x, 52));
      expect(pixel(img, x, 63)).toEqual(pixel(img, x, 42));
    }
    // cropImage takes the box back out: the photo at 64×43.
    const content = cropImage(img.tensor, img.shape, img.shape.content);
    expect(content).toHaveLength(3 * 64 * 43);
    expect(pixel({ tensor: content, width: 64, height: 43 }, 31, 21)).toEqual(pixel(img, 31, 31));
  });

  it("refuses a photo beyond 4:1 or too small, naming the limit", async () => {
    const model = { native: { width: 512, height: 512 }, multiple: 64 };
    const wide = await synth(500, 100, 3, () => [9, 9, 9])
      .png()
      .toBuffer();
    await expect(loadPhoto(wide, model)).rejects.toThrow(/an aspect ratio of 5\.00:1; the limit is 4:1/);
    const small = await synth(60, 60, 3, () => [9, 9, 9])
      .png()
      .toBuffer();
    await expect(loadPhoto(small, model)).rejects.toThrow(/each side must be at least 64 pixels/);
  });
});

describe("probeImage", () => {
  it("describes the fixture photos", async () => {
    expect(await probeImage(photo("chelsea.png"))).toMatchObject({
      format: "png",
      width: 451,
      height: 300,
      pages: 1,
      pixels: 135300,
    });
    expect(await probeImage(photo("coffee.png"))).toMatchObject({ width: 600, height: 400 });
  });

  it("refuses bytes that are not an image, and formats that are not photos, by their first bytes", async () => {
    const formats = "send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.";
    expect((await rejection(probeImage(Uint8Array.from([0x00, 0x9c, 0x13, 0x77, 0xfe])))).message).toBe(
      `That file is not an image I can read; ${formats}`,
    );
    expect((await rejection(probeImage(new TextEncoder().encode("hello, not a picture")))).message).toBe(
      `That file is a text file; ${formats}`,
    );
    const svg = new TextEncoder().encode(
      '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
    );
    expect((await rejection(probeImage(svg))).message).toBe(`That file is an SVG image; ${formats}`);
    const png = await synth(64, 64, 3, () => [1, 2, 3])
      .png()
      .toBuffer();
    const onlyJpeg = { ...DEFAULT_IMAGE_LIMITS, formats: ["jpeg"] };
    expect((await rejection(probeImage(png, onlyJpeg))).message).toBe(
      "That file is a PNG image; send a JPEG image.",
    );
  });

  it("refuses huge declared dimensions before decoding anything", async () => {
    const bomb = pngDeclaring(100_000, 100_000);
    expect(bomb.byteLength).toBeLessThan(100);
    expect((await rejection(probeImage(bomb))).message).toMatch(
      /100000×100000; the largest side allowed is 12000 pixels/,
    );
    expect((await rejection(loadImage(bomb))).message).toMatch(/largest side/);
    const wide = pngDeclaring(10_000, 9_000);
    expect((await rejection(probeImage(wide))).message).toBe(
      "The image is 10000×9000, 90.0 megapixels; the limit is 40.0 megapixels.",
    );
    // Just over the limit: as many decimals as it takes to show it is over.
    expect((await rejection(probeImage(pngDeclaring(6481, 6172)))).message).toBe(
      "The image is 6481×6172, 40.001 megapixels; the limit is 40.000 megapixels.",
    );
    expect((await rejection(probeImage(pngDeclaring(6400, 6251)))).message).toMatch(
      /40\.01 megapixels; the limit is 40\.00 megapixels/,
    );
    expect((await probeImage(pngDeclaring(8000, 5000))).pixels).toBe(40_000_000);
    expect((await rejection(probeImage(pngDeclaring(20, 500)))).message).toMatch(/at least 32 pixels/);
    const big = new Uint8Array(DEFAULT_IMAGE_LIMITS.maxBytes + 1);
    expect((await rejection(probeImage(big))).message).toMatch(/the limit is 20\.0 MiB/);
  });

  it("refuses animated images unless allowed, then uses the first frame", async () => {
    const frame = (rgb: number[]) =>
      synth(64, 64, 3, () => rgb)
        .png()
        .toBuffer();
    const gif = await sharp([await frame([255, 0, 0]), await frame([0, 0, 255])], {
      join: { animated: true },
    })
      .gif()
      .toBuffer();
    expect((await rejection(probeImage(gif))).message).toMatch(/animated \(2 frames\); send a still image/);
    // Pages of a TIFF are not frames of an animation.
    const tiff = await sharp([await frame([1, 2, 3]), await frame([4, 5, 6]), await frame([7, 8, 9])], {
      join: { animated: true },
    })
      .tiff()
      .toBuffer();
    expect((await rejection(probeImage(tiff))).message).toBe(
      "The image is a TIFF of 3 pages; send one page, saved as a single-page image.",
    );
    const limits = { ...DEFAULT_IMAGE_LIMITS, allowAnimated: true };
    expect(await probeImage(gif, limits)).toMatchObject({
      format: "gif",
      pages: 2,
      animated: true,
      width: 64,
      height: 64,
    });
    const first = pixel(await loadImage(gif, { size: 64, limits }), 32, 32);
    expect(first[0]).toBeGreaterThan(240);
    expect(first[2]).toBeLessThan(15);
  });
});

describe("tensorToPng", () => {
  it("writes a PNG that loads back to the same tensor (8-bit rounding)", async () => {
    const src = await loadImage(photo("chelsea.png"), { size: 64 });
    const png = await tensorToPng(src.tensor, [1, 3, 64, 64]);
    expect((await sharp(png).metadata()).format).toBe("png");
    const back = await loadImage(png, { size: 64 });
    let maxDiff = 0;
    for (let i = 0; i < src.tensor.length; i++)
      maxDiff = Math.max(maxDiff, Math.abs((back.tensor[i] as number) - (src.tensor[i] as number)));
    expect(maxDiff).toBeLessThan(1e-6);
  });

  it("clamps out-of-range values and checks the shape", async () => {
    const t = new Float32Array(3 * 64 * 64).fill(3);
    t.fill(-7, 0, 64 * 64);
    const img = await loadImage(await tensorToPng(t, [3, 64, 64]), { size: 64 });
    expect(pixel(img, 0, 0)).toEqual([0, 255, 255]);
    await expect(tensorToPng(t, [3, 64, 32])).rejects.toThrow(/\[3, H, W\] or \[1, 3, H, W\]/);
  });
});
