// The intake (src/engine/intake): uploads checked and converted in decoder processes with a deadline.
// Every hostile, broken or unusual file is generated here (src/cli/bench/hostile-images.ts,
// support/edge-images.ts); the one committed sample is the HEVC HEIC, which nothing on npm can encode
// (test/fixtures/images/README.md).
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import {
  corrupted,
  progressiveScanBomb,
  segment,
  truncated,
  withoutHuffmanTables,
} from "../../../src/cli/bench/hostile-images.js";
import { ImageInputError, loadImage, probeImage } from "../../../src/engine/image.js";
import { convertPhoto } from "../../../src/engine/intake/convert.js";
import { FAILURE_TEXTS } from "../../../src/engine/intake/failures.js";
import { powerLawProfile } from "../../../src/engine/intake/png-gamma.js";
import { DecoderPool } from "../../../src/engine/intake/pool.js";
import { DEFAULT_IMAGE_LIMITS, type ImageLimits, STORED_PHOTO_MAX_PIXELS } from "../../../src/spec/upload.js";
import {
  adobeCmykJpeg,
  apng,
  heifWithIcc,
  heifWithNclx,
  losslessJpeg,
  pixels,
  pngWith,
  pngWithIcc,
  tiff,
} from "./support/edge-images.js";

const fixture = (name: string) => new Uint8Array(readFileSync(`test/fixtures/images/${name}`));
const COFFEE = fixture("coffee.png");
const pools: DecoderPool[] = [];
const pool = (options: ConstructorParameters<typeof DecoderPool>[0] = {}) => {
  const p = new DecoderPool(options);
  pools.push(p);
  return p;
};
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

/** The refusal `promise` ends in (an ImageInputError), or undefined when the file was accepted. */
async function refusal(promise: Promise<unknown>): Promise<ImageInputError | undefined> {
  return promise.then(
    () => undefined,
    (error: unknown) => {
      expect(error).toBeInstanceOf(ImageInputError);
      return error as ImageInputError;
    },
  );
}

const rgb = async (bytes: Uint8Array) =>
  sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
/**
 * A 96×64 RGB gradient (blue falling from `blue`) as raw 8-bit values, the same values in 16 bits, and
 * both as PNGs: the 16-bit file holds exactly the 8-bit one's colours.
 */
async function gradientPngs(blue: number) {
  const stored = Buffer.alloc(96 * 64 * 3);
  for (let i = 0; i < 96 * 64; i++)
    stored.set([40 + 2 * (i % 96), 30 + 3 * ((i / 96) | 0), blue - (i % 96)], 3 * i);
  const raw = { raw: { width: 96, height: 64, channels: 3 } } as const;
  const wide = Uint16Array.from(stored, (v) => v * 257);
  return {
    stored,
    wide,
    png8: await sharp(stored, raw).png().toBuffer(),
    png16: await sharp(wide, raw).toColourspace("rgb16").png().toBuffer(),
  };
}

const meanAbsDiff = (a: Uint8Array, b: Uint8Array) => {
  expect(a.length).toBe(b.length);
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs((a[i] as number) - (b[i] as number));
  return sum / a.length;
};

describe("acceptance converts: what is accepted is the PNG the engine reads", () => {
  const decoders = pool();

  it("keeps a photo within the pixel cap pixel for pixel, as an 8-bit sRGB PNG", async () => {
    const photo = await decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS);
    expect([photo.width, photo.height, photo.probe.format]).toEqual([600, 400, "png"]);
    const [got, want] = [await rgb(photo.bytes), await rgb(COFFEE)];
    expect((await sharp(photo.bytes).metadata()).format).toBe("png");
    expect(got.info.channels).toBe(3);
    expect(Buffer.compare(got.data, want.data)).toBe(0);
  });

  it("scales a larger photo down to STORED_PHOTO_MAX_PIXELS at its aspect ratio, oriented", async () => {
    // 3000×2000 stored, EXIF orientation 6: displayed 2000×3000.
    const big = await sharp(COFFEE).resize(3000, 2000).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const photo = await decoders.convert(big, DEFAULT_IMAGE_LIMITS);
    expect(photo.width * photo.height).toBeLessThanOrEqual(STORED_PHOTO_MAX_PIXELS * 1.001);
    expect(photo.width * photo.height).toBeGreaterThan(STORED_PHOTO_MAX_PIXELS * 0.99);
    expect(photo.height / photo.width).toBeCloseTo(1.5, 2);
    expect([photo.probe.width, photo.probe.height, photo.probe.orientation]).toEqual([2000, 3000, 6]);
  });

  it("stores CMYK, Display P3, 16-bit, greyscale, transparent and rotated photos as the engine reads the originals", async () => {
    // The engine loads the stored PNG, never the upload: it must see the same pixels as from the upload
    // itself (no colour converted twice, no orientation applied twice, alpha already on white).
    const gradient = Buffer.alloc(96 * 64 * 4);
    for (let i = 0; i < 96 * 64; i++) {
      const [x, y] = [i % 96, Math.floor(i / 96)];
      gradient.set([40 + 2 * x, 30 + 3 * y, 200 - x, x < 48 ? 255 : 96], 4 * i);
    }
    const rgba = () => sharp(gradient, { raw: { width: 96, height: 64, channels: 4 } });
    const rgb = () => rgba().removeAlpha();
    const variants: Array<[string, Buffer]> = [
      ["cmyk jpeg", await rgb().toColourspace("cmyk").jpeg({ quality: 100 }).toBuffer()],
      ["display-p3 png", await rgb().withIccProfile("p3").png().toBuffer()],
      ["16-bit png", await rgb().toColourspace("rgb16").png().toBuffer()],
      ["greyscale png", await rgb().toColourspace("b-w").png().toBuffer()],
      ["transparent png", await rgba().png().toBuffer()],
      ["16-bit transparent tiff", await rgba().toColourspace("rgb16").tiff().toBuffer()],
      ["rotated jpeg", await rgb().jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer()],
      ["mirrored webp", await rgb().webp({ lossless: true }).withMetadata({ orientation: 2 }).toBuffer()],
    ];
    for (const [name, bytes] of variants) {
      const photo = await decoders.convert(bytes, DEFAULT_IMAGE_LIMITS);
      const size = { width: photo.width, height: photo.height };
      const fromStored = await loadImage(photo.bytes, { size });
      const fromUpload = await loadImage(bytes, { size });
      // Both go through the same 8-bit conversion: at most one level apart (rounding), in [-1, 1] units.
      let worst = 0;
      for (let i = 0; i < fromStored.tensor.length; i++)
        worst = Math.max(
          worst,
          Math.abs((fromStored.tensor[i] as number) - (fromUpload.tensor[i] as number)),
        );
      expect(worst * 127.5, name).toBeLessThanOrEqual(1.0001);
      expect((await sharp(photo.bytes).metadata()).space, name).toBe("srgb");
    }
  });

  it("decodes an iPhone-style HEVC HEIC that sharp alone cannot", async () => {
    const heic = fixture("chelsea.heic");
    expect(await probeImage(heic)).toMatchObject({
      format: "heif",
      compression: "hevc",
      width: 192,
      height: 128,
    });
    await expect(sharp(heic).raw().toBuffer()).rejects.toThrow(); // sharp's libheif has no HEVC decoder
    const photo = await decoders.convert(heic, DEFAULT_IMAGE_LIMITS);
    expect([photo.width, photo.height]).toEqual([192, 128]);
    // Against the photo it was made from: HEVC at quality 60 stays within a few levels on average.
    const reference = await sharp(fixture("chelsea.png"))
      .resize(192, 128, { kernel: "lanczos3" })
      .raw()
      .toBuffer();
    expect(meanAbsDiff((await rgb(photo.bytes)).data, reference)).toBeLessThan(4);
    // The engine's own loader reads HEIC the same way (the CLI's `edit imagic --image photo.heic`).
    const loaded = await loadImage(heic, { size: { width: 192, height: 128 } });
    expect(loaded.tensor).toHaveLength(3 * 192 * 128);
  });

  /** libvips' Display P3 profile, as it embeds it. */
  const displayP3 = async () =>
    (await sharp(await sharp(COFFEE).withIccProfile("p3").png().toBuffer()).metadata()).icc as Buffer;

  it("converts an HEVC HEIC through its ICC profile, as iPhones tag their Display P3 photos", async () => {
    // libheif-js hands back the coded RGB values; without the profile a P3 photo would be read as
    // sRGB, its colours duller than the sender's. The same values in a P3-tagged PNG are the reference.
    const heic = fixture("chelsea.heic");
    const p3 = await displayP3();
    const tagged = heifWithIcc(heic, p3);
    expect((await probeImage(tagged)).compression).toBe("hevc");
    const untagged = await convertPhoto(heic, DEFAULT_IMAGE_LIMITS);
    const reference = await convertPhoto(pngWithIcc(untagged.bytes, p3), DEFAULT_IMAGE_LIMITS);
    const photo = await convertPhoto(tagged, DEFAULT_IMAGE_LIMITS);
    const [got, want, plain] = await Promise.all(
      [photo, reference, untagged].map(async (p) => (await rgb(p.bytes)).data),
    );
    expect(meanAbsDiff(plain as Buffer, want as Buffer)).toBeGreaterThan(2); // the profile matters here
    expect(meanAbsDiff(got as Buffer, want as Buffer)).toBeLessThan(0.5);
  });

  it("converts a HEIC or AVIF that declares Display P3 by nclx codes, not a profile, as one tagged with the profile", async () => {
    // libvips converts through ICC profiles only and would read code-tagged P3 values as sRGB.
    const p3 = await displayP3();
    const avif = new Uint8Array(
      await sharp(COFFEE)
        .resize(96, 64)
        .avif({ quality: 100, effort: 0, chromaSubsampling: "4:4:4" })
        .toBuffer(),
    );
    for (const photo of [avif, fixture("chelsea.heic")]) {
      const [byCodes, byProfile, plain, srgbCodes] = await Promise.all(
        [heifWithNclx(photo, 12), heifWithIcc(photo, p3), photo, heifWithNclx(photo, 1)].map(
          async (bytes) => (await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes)).data,
        ),
      );
      expect(meanAbsDiff(plain as Buffer, byProfile as Buffer)).toBeGreaterThan(2); // P3 matters here
      expect(meanAbsDiff(byCodes as Buffer, byProfile as Buffer)).toBeLessThan(0.5);
      expect(meanAbsDiff(srgbCodes as Buffer, plain as Buffer)).toBeLessThan(0.5); // sRGB codes: as untagged
    }
  });

  it("converts a 16-bit PNG or TIFF through its ICC profile as the same values in 8 bits", async () => {
    // sharp converts 16-bit RGB through its profile into Display P3, not sRGB: unless told to convert
    // on to sRGB, P3 values were read as sRGB (a P3 photo as if untagged, an sRGB-tagged one duller).
    const { wide, png8, png16 } = await gradientPngs(200);
    const srgb = (await sharp(await sharp(png8).withIccProfile("srgb").png().toBuffer()).metadata())
      .icc as Buffer;
    const pixelsOf = async (bytes: Uint8Array) =>
      (await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes)).data;
    for (const [name, icc] of [
      ["Display P3", await displayP3()],
      ["sRGB", srgb],
    ] as const) {
      const want = await pixelsOf(pngWithIcc(png8, icc));
      const tagged16 = pngWithIcc(png16, icc);
      const tiff16 = tiff({
        width: 96,
        height: 64,
        bits: [16, 16, 16],
        photometric: 2,
        data: new Uint8Array(wide.buffer),
        tags: [[34675, 7, [...icc]]], // InterColorProfile
      });
      expect((await probeImage(tiff16)).space).toBe("rgb16");
      for (const [format, bytes] of [
        ["png", tagged16],
        ["tiff", tiff16],
      ] as const) {
        expect(meanAbsDiff(await pixelsOf(bytes), want), `16-bit ${format}, ${name}`).toBeLessThan(0.5);
      }
    }
    // The P3 profile matters here: read as untagged, the same values differ.
    expect(
      meanAbsDiff(await pixelsOf(png16), await pixelsOf(pngWithIcc(png8, await displayP3()))),
    ).toBeGreaterThan(2);
  });

  it("refuses a portrait JPEG without Huffman tables that a 64-pixel check let through", async () => {
    // Without DHT segments libjpeg falls back to the standard tables and decodes garbage until the data
    // runs out near the bottom: a 64-pixel centre crop never reads that far, the working size does.
    const portrait = await sharp(COFFEE).resize(400, 1200, { fit: "fill" }).jpeg({ quality: 85 }).toBuffer();
    const broken = withoutHuffmanTables(portrait);
    expect((await loadImage(broken, { size: 64 })).tensor).toHaveLength(3 * 64 * 64);
    const error = await refusal(decoders.convert(broken, DEFAULT_IMAGE_LIMITS));
    expect(error?.message).toBe(FAILURE_TEXTS.damaged);
    expect(error?.detail).toMatch(/Corrupt JPEG data/);
    // A portrait photo cut short past its middle: the same blind spot, said as incomplete.
    const cut = truncated(await sharp(COFFEE).resize(400, 1200, { fit: "fill" }).png().toBuffer(), 0.9);
    expect((await loadImage(cut, { size: 64 })).tensor).toHaveLength(3 * 64 * 64);
    expect((await refusal(decoders.convert(cut, DEFAULT_IMAGE_LIMITS)))?.message).toBe(
      FAILURE_TEXTS.truncated,
    );
  });
});

describe("decode-time bombs: a progressive JPEG of thousands of scans", () => {
  const bomb = progressiveScanBomb(4096, 4096);

  it("is refused from its markers before anything is decoded", async () => {
    expect(bomb.scans).toBe(2647);
    expect(bomb.bytes.byteLength).toBeLessThan(300_000);
    const meta = await sharp(bomb.bytes).metadata();
    expect([meta.format, meta.width, meta.isProgressive]).toEqual(["jpeg", 4096, true]);
    const error = await refusal(probeImage(bomb.bytes));
    expect(error?.message).toBe(
      "The image is a progressive JPEG of 2647 scans; the limit is 100 (cameras and editors write at most a dozen) — open it and save it again as a JPEG.",
    );
  });

  it("is stopped at the decode deadline when the scan limit lets it through, and the next upload is served", async () => {
    // Stated budget: decodeTimeoutMs (here 1 s) from the moment a decoder takes the file. This file
    // needs ~20 s of CPU on the 2-core machine (docs/PERFORMANCE.md); the slack below covers a loaded CI.
    const decoders = pool({ size: 1 });
    await decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS); // a started decoder: the deadline alone is timed
    const [pid] = decoders.pids;
    const limits: ImageLimits = { ...DEFAULT_IMAGE_LIMITS, maxScans: 10_000, decodeTimeoutMs: 1000 };
    const started = performance.now();
    const error = await refusal(decoders.convert(bomb.bytes, limits));
    const elapsed = performance.now() - started;
    expect(error?.message).toBe(
      "The image takes longer than 1 s to decode (the limit); open it and save it again as a JPEG or PNG.",
    );
    expect(elapsed).toBeGreaterThanOrEqual(1000);
    expect(elapsed).toBeLessThan(1000 + 5000);
    const next = await decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS);
    expect(next.width).toBe(600);
    expect(decoders.pids).not.toContain(pid); // the stuck decoder was killed and replaced
  });

  it("a decoder that dies on a file is the file's refusal, not an error of the bot", async () => {
    const decoders = pool({ size: 1 });
    await decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS);
    const limits: ImageLimits = { ...DEFAULT_IMAGE_LIMITS, maxScans: 10_000, decodeTimeoutMs: 60_000 };
    const pending = refusal(decoders.convert(bomb.bytes, limits));
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(decoders.pids[0] as number, "SIGKILL");
    const error = await pending;
    expect(error?.message).toBe(FAILURE_TEXTS.damaged);
    expect(error?.detail).toMatch(/^decoder exited \(SIGKILL\)/);
  });
});

describe("messages: the sender's words, never the decoder's", () => {
  /** Words only decoders use: none may reach a message. */
  const DECODER_WORDS =
    /vips|libpng|png:|jpeg:|Warning treated|failOn|tiff2vips|TIFF[A-Z]|heif:|libheif|libde265|bad seek|webp:|gifload|gif:|Input buffer|unsupported image format|premature|Corrupt|Huffman|\n/i;
  /** Everything an upload may be told (besides being accepted). */
  const TEMPLATES = [
    FAILURE_TEXTS.truncated,
    FAILURE_TEXTS.damaged,
    /^That file is (not an image I can read|an? [A-Za-z0-9 ()]+); send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image\.$/,
    "That file is empty (0 bytes); send the photo again.",
    /^The image is \d+×\d+; each side must be at least \d+ pixels\.$/,
    /^The image is \d+×\d+; the largest side allowed is \d+ pixels\.$/,
    /^The image is \d+×\d+, [\d.]+ megapixels; the limit is [\d.]+ megapixels\.$/,
    /^The image is animated \(\d+ frames\); send a still image\.$/,
    /^The image is a TIFF of \d+ pages; send one page, saved as a single-page image\.$/,
    /^The image is a progressive JPEG of \d+ scans; the limit is \d+ /,
    /^The image is a \d+-bit JPEG, which I cannot read /,
    /^The image is a HEIF file of [A-Z0-9]+-coded pictures, which I cannot decode; send it as a JPEG\.$/,
    /^The image stores [\w -]+ (RGB|greyscale|CMYK) pixels; I read 8- and 16-bit images \(and 32-bit floating-point RGB\) — save it as an 8- or 16-bit image\.$/,
    /^The image has \d+ channels: (RGB|greyscale|CMYK), alpha and \d+ more; save it without the extra channels \(as a PNG, say\)\.$/,
  ];

  async function brokenFiles(): Promise<Array<[string, Uint8Array]>> {
    const base = sharp(COFFEE).resize(240, 160);
    const originals: Array<[string, Uint8Array]> = [
      ["jpeg", await base.clone().jpeg().toBuffer()],
      ["progressive jpeg", await base.clone().jpeg({ progressive: true }).toBuffer()],
      ["png", await base.clone().png().toBuffer()],
      ["webp", await base.clone().webp().toBuffer()],
      ["gif", await base.clone().gif().toBuffer()],
      ["tiff", await base.clone().tiff({ compression: "lzw" }).toBuffer()],
      ["avif", await base.clone().avif({ effort: 0 }).toBuffer()],
      ["heic", fixture("chelsea.heic")],
    ];
    const files: Array<[string, Uint8Array]> = [];
    for (const [name, bytes] of originals) {
      for (const fraction of [0.05, 0.2, 0.4, 0.6, 0.8, 0.97])
        files.push([`${name} cut at ${fraction}`, truncated(bytes, fraction)]);
      for (const [count, seed] of [
        [3, 1],
        [3, 2],
        [20, 3],
        [20, 4],
        [200, 5],
      ] as const) {
        files.push([
          `${name} with ${count} bytes changed (seed ${seed})`,
          corrupted(bytes, count, seed, Math.min(64, bytes.byteLength >> 3)),
        ]);
      }
      const zeroed = new Uint8Array(bytes);
      zeroed.fill(0, 12, 40);
      files.push([`${name} with its header zeroed`, zeroed]);
    }
    const jpeg = originals[0]?.[1] as Uint8Array;
    files.push(["jpeg without Huffman tables", withoutHuffmanTables(jpeg)]);
    files.push(["empty", new Uint8Array(0)]);
    files.push(["one byte", Uint8Array.from([0xff])]);
    files.push(["noise", corrupted(new Uint8Array(4096), 4096, 9, 0)]);
    files.push(["text", new TextEncoder().encode("hello, this is not a picture")]);
    files.push(["bmp", Uint8Array.from([0x42, 0x4d, ...new Array(60).fill(0)])]);
    files.push(["pdf", new TextEncoder().encode("%PDF-1.7\n%âãÏÓ\n1 0 obj\n<<>>\nendobj\n")]);
    files.push([
      "svg",
      new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="99" height="99"/>'),
    ]);
    // A QuickTime movie without ftyp (older cameras): a wide atom, then the media data.
    files.push([
      "mov",
      Uint8Array.from([
        0,
        0,
        0,
        8,
        0x77,
        0x69,
        0x64,
        0x65,
        0,
        0,
        0,
        16,
        0x6d,
        0x64,
        0x61,
        0x74,
        ...new Array(8).fill(7),
      ]),
    ]);
    files.push([
      "mp4",
      Uint8Array.from([0, 0, 0, 24, ...new TextEncoder().encode("ftypisom"), ...new Array(40).fill(0)]),
    ]);
    const frames = await Promise.all(
      [0, 255].map((v) =>
        sharp({ create: { width: 80, height: 80, channels: 3, background: { r: v, g: 0, b: 0 } } })
          .png()
          .toBuffer(),
      ),
    );
    files.push([
      "animated gif",
      await sharp(frames, { join: { animated: true } })
        .gif()
        .toBuffer(),
    ]);
    files.push([
      "3-page tiff",
      await sharp([frames[0], frames[1], frames[0]] as Buffer[], { join: { animated: true } })
        .tiff()
        .toBuffer(),
    ]);
    files.push(["scan bomb", progressiveScanBomb(512, 512).bytes]);
    return files;
  }

  it("feeds ~100 broken files through the intake: each answer is one of the templates, the decoder's text only in the detail", async () => {
    const decoders = pool({ maxWaiting: 200 });
    const files = await brokenFiles();
    expect(files.length).toBeGreaterThan(100);
    const answers = await Promise.all(
      files.map(
        async ([name, bytes]) =>
          [name, await refusal(decoders.convert(bytes, DEFAULT_IMAGE_LIMITS))] as const,
      ),
    );
    let refused = 0;
    for (const [name, error] of answers) {
      if (!error) continue; // a few changed bytes can leave a decodable picture: accepted and converted
      refused++;
      expect(error.message, name).not.toMatch(DECODER_WORDS);
      expect(
        TEMPLATES.some((t) => (typeof t === "string" ? error.message === t : t.test(error.message))),
        `${name}: ${error.message}`,
      ).toBe(true);
    }
    expect(refused).toBeGreaterThan(files.length * 0.8);
    const said = Object.fromEntries(answers.map(([name, error]) => [name, error?.message]));
    expect(said.empty).toBe("That file is empty (0 bytes); send the photo again.");
    expect(said["png cut at 0.6"]).toBe(FAILURE_TEXTS.truncated);
    expect(said["heic cut at 0.8"]).toBe(FAILURE_TEXTS.truncated);
    expect(said["progressive jpeg cut at 0.6"]).toBe(FAILURE_TEXTS.truncated);
    expect(said.bmp).toBe("That file is a BMP image; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.");
    expect(said.svg).toBe(
      "That file is an SVG image; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
    );
    expect(said.mp4).toBe(
      "That file is an MP4 video; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
    );
    expect(said.mov).toBe(
      "That file is a QuickTime video; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
    );
    expect(said.text).toBe(
      "That file is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
    );
    expect(said.noise).toBe(
      "That file is not an image I can read; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
    );
    expect(said["animated gif"]).toBe("The image is animated (2 frames); send a still image.");
    expect(said["3-page tiff"]).toBe(
      "The image is a TIFF of 3 pages; send one page, saved as a single-page image.",
    );
  });
});

describe("cross-talk: concurrent uploads each get their own answer", () => {
  it("30 broken uploads of three kinds at once: each message and logged detail is about its own file", async () => {
    const decoders = pool({ size: 2 });
    const base = sharp(COFFEE).resize(300, 200);
    const kinds = {
      png: {
        bytes: truncated(await base.clone().png().toBuffer(), 0.5),
        says: FAILURE_TEXTS.truncated,
        own: /png/i,
        foreign: /jpe?g|webp/i,
      },
      jpeg: {
        bytes: withoutHuffmanTables(await base.clone().jpeg({ quality: 70 }).toBuffer()),
        says: FAILURE_TEXTS.damaged,
        own: /jpeg/i,
        foreign: /png|webp/i,
      },
      webp: {
        bytes: truncated(await base.clone().webp().toBuffer(), 0.5),
        says: FAILURE_TEXTS.truncated,
        own: /webp/i,
        foreign: /png|jpe?g/i,
      },
    };
    const order = ["png", "jpeg", "webp"] as const;
    const uploads = Array.from({ length: 30 }, (_, i) => order[i % 3] as (typeof order)[number]);
    const answers = await Promise.all(
      uploads.map((kind) => refusal(decoders.convert(kinds[kind].bytes, DEFAULT_IMAGE_LIMITS))),
    );
    answers.forEach((error, i) => {
      const kind = kinds[uploads[i] as (typeof order)[number]];
      expect(error?.message).toBe(kind.says);
      expect(error?.detail, `${uploads[i]} #${i}: ${error?.detail}`).toMatch(kind.own);
      expect(error?.detail, `${uploads[i]} #${i}: ${error?.detail}`).not.toMatch(kind.foreign);
    });
  });

  it("holds each sender to maxPerSender uploads at once, so one sender's flood does not turn others away", async () => {
    const decoders = pool({ size: 1, maxPerSender: 2 });
    const ann = [0, 1, 2].map(() => decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS, "ann"));
    const bob = decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS, "bob");
    const results = await Promise.allSettled([...ann, bob]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "rejected", "fulfilled"]);
    expect((results[2] as PromiseRejectedResult).reason.message).toBe(
      "You have 2 photos being checked already (the most at once); send this one again when they are done.",
    );
    // Done ones no longer count.
    expect((await decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS, "ann")).width).toBe(600);
  });

  it("turns uploads away, in words, when too many wait for a decoder", async () => {
    const decoders = pool({ size: 1, maxWaiting: 1 });
    const results = await Promise.allSettled(
      [0, 1, 2].map(() => decoders.convert(COFFEE, DEFAULT_IMAGE_LIMITS)),
    );
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "rejected"]);
    expect((results[2] as PromiseRejectedResult).reason.message).toBe(
      "I am checking too many photos right now; try again in a minute.",
    );
  });
});

describe("no orphans: decoders die with the process that started them", () => {
  /** Alive and not a zombie (a killed process's children are reaped by init, which may take a moment). */
  const running = (pid: number) => {
    try {
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    } catch {
      return false;
    }
  };

  it("a bot process SIGKILLed leaves no decoder behind", async () => {
    const owner = spawn(process.execPath, ["--import", "tsx", "test/engine/intake/support/pool-owner.ts"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const line = await new Promise<string>((resolve, reject) => {
      owner.stdout.setEncoding("utf8").on("data", (text: string) => resolve(text.split("\n")[0] as string));
      owner.once("exit", (code) => reject(new Error(`the pool owner exited (${code}) before it was ready`)));
    });
    const pids = JSON.parse(line) as number[];
    expect(pids).toHaveLength(2);
    expect(pids.every(running)).toBe(true);
    const exited = new Promise((resolve) => owner.once("exit", resolve));
    owner.kill("SIGKILL");
    await exited;
    // Each decoder exits when its IPC channel closes: wait for that (bounded only against a hang).
    for (let i = 0; i < 600 && pids.some(running); i++) await new Promise((r) => setTimeout(r, 50));
    expect(pids.filter(running)).toEqual([]);
  });
});

describe("edge formats: converted right or refused in words", () => {
  const flat = (r: number, g: number, b: number) =>
    sharp({ create: { width: 80, height: 80, channels: 3, background: { r, g, b } } })
      .png()
      .toBuffer();

  /** The colour at the centre of each quadrant of an 8-bit RGB(A) PNG: top left, top right, bottom left, bottom right. */
  const quadrants = async (png: Uint8Array) => {
    const { data, info } = await rgb(png);
    const at = (fx: number, fy: number) => {
      const i = (Math.floor(info.height * fy) * info.width + Math.floor(info.width * fx)) * 3;
      return [...data.subarray(i, i + 3)];
    };
    return {
      size: [info.width, info.height],
      colours: [at(0.25, 0.25), at(0.75, 0.25), at(0.25, 0.75), at(0.75, 0.75)],
    };
  };
  const near = (got: number[][], want: number[][], tolerance: number) =>
    got.every((c, i) => c.every((v, j) => Math.abs(v - (want[i]?.[j] as number)) <= tolerance));

  /** Four colours far apart, for pictures of four quadrants: top left, top right, bottom left, bottom right. */
  const QUADS = [
    [220, 30, 30],
    [30, 200, 60],
    [40, 50, 210],
    [230, 210, 40],
  ];

  it("turns every EXIF orientation upright in JPEG, PNG, WebP, TIFF and AVIF, at the displayed width and height", async () => {
    // Displayed: 96×64 in four coloured quadrants. Each file stores the pixels that orientation o shows
    // that way (transposed for 5–8, so stored 64×96).
    const shown = (x: number, y: number) => QUADS[(y < 32 ? 0 : 2) + (x < 48 ? 0 : 1)] as number[];
    for (let o = 1; o <= 8; o++) {
      const [w, h] = o >= 5 ? [64, 96] : [96, 64];
      const stored = Buffer.alloc(w * h * 3);
      for (let y = 0; y < 64; y++) {
        for (let x = 0; x < 96; x++) {
          // Where displayed (x, y) is stored, per the EXIF definition of each orientation.
          const [sx, sy] = [
            [x, y],
            [w - 1 - x, y],
            [w - 1 - x, h - 1 - y],
            [x, h - 1 - y],
            [y, x],
            [y, h - 1 - x],
            [w - 1 - y, h - 1 - x],
            [w - 1 - y, x],
          ][o - 1] as [number, number];
          stored.set(shown(x, y), (sy * w + sx) * 3);
        }
      }
      const base = () =>
        sharp(stored, { raw: { width: w, height: h, channels: 3 } }).withMetadata({ orientation: o });
      const files: Array<[string, Buffer, number]> = [
        ["jpeg", await base().jpeg({ quality: 95 }).toBuffer(), 30],
        ["png", await base().png().toBuffer(), 0],
        ["webp", await base().webp({ lossless: true }).toBuffer(), 0],
        ["tiff", await base().tiff({ compression: "lzw" }).toBuffer(), 0],
        ["avif", await base().avif({ quality: 90, effort: 0 }).toBuffer(), 40],
      ];
      for (const [format, bytes, tolerance] of files) {
        const photo = await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS);
        const { size, colours } = await quadrants(photo.bytes);
        expect(size, `${format} orientation ${o}`).toEqual([96, 64]);
        expect(
          near(colours, QUADS, tolerance),
          `${format} orientation ${o}: ${JSON.stringify(colours)}`,
        ).toBe(true);
      }
    }
  });

  it("reads a JPEG's EXIF orientation from a big- or little-endian header, ignores EXIF it cannot follow, and takes an MPO's first picture", async () => {
    // Cameras write EXIF in either byte order (Canon and Nikon big-endian); broken offsets must neither
    // refuse the photo nor turn it. Stored: the upright picture turned a quarter left, for orientation 6.
    const upright = Buffer.alloc(96 * 64 * 3);
    for (let i = 0; i < 96 * 64; i++)
      upright.set(QUADS[(i / 96 < 32 ? 0 : 2) + (i % 96 < 48 ? 0 : 1)] as number[], 3 * i);
    const stored = await sharp(upright, { raw: { width: 96, height: 64, channels: 3 } })
      .rotate(270)
      .jpeg({ quality: 95 })
      .toBuffer();
    /** A TIFF header and one IFD holding Orientation (SHORT) = 6, its offset `ifd` (8: right after the header). */
    const exif = (little: boolean, ifd = 8) => {
      const b = Buffer.alloc(8 + 2 + 12 + 4);
      b.write(little ? "II*\0" : "MM\0*", 0, "latin1");
      const [u16, u32] = little
        ? [b.writeUInt16LE.bind(b), b.writeUInt32LE.bind(b)]
        : [b.writeUInt16BE.bind(b), b.writeUInt32BE.bind(b)];
      u32(ifd, 4);
      u16(1, 8);
      u16(274, 10);
      u16(3, 12);
      u32(1, 14);
      u16(6, 18);
      return segment(0xe1, [...Buffer.from("Exif\0\0", "latin1"), ...b]);
    };
    const withExif = (app1: Uint8Array) => Buffer.concat([stored.subarray(0, 2), app1, stored.subarray(2)]);
    const second = await sharp({ create: { width: 32, height: 32, channels: 3, background: "#000" } })
      .jpeg()
      .toBuffer();
    const files: Array<[string, Uint8Array, number[]]> = [
      ["little-endian", withExif(exif(true)), [96, 64]],
      ["big-endian", withExif(exif(false)), [96, 64]],
      ["IFD offset past the end", withExif(exif(true, 5000)), [64, 96]],
      ["MPO: a second picture after the first", Buffer.concat([withExif(exif(false)), second]), [96, 64]],
    ];
    for (const [name, bytes, size] of files) {
      const photo = await quadrants((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes);
      expect(photo.size, name).toEqual(size);
      if (size[0] === 96)
        expect(near(photo.colours, QUADS, 30), `${name}: ${JSON.stringify(photo.colours)}`).toBe(true);
    }
  });

  it("reads Photoshop's CMYK and YCCK JPEGs (Adobe marker, inverted samples), with or without the marker, as the same inks in a TIFF", async () => {
    // Left: C0 M60 Y50 K10 (a muted red); right: C60 M10 Y30 K0 (a muted teal), in flat 8×8 blocks.
    const inks = [
      [0, 153, 128, 26],
      [153, 26, 77, 0],
    ];
    const ink = (bx: number) => inks[bx < 4 ? 0 : 1] as number[];
    const reference = tiff({
      width: 64,
      height: 64,
      bits: [8, 8, 8, 8],
      photometric: 5,
      data: pixels(64 * 64, (i) => ink(Math.floor((i % 64) / 8))),
    });
    const want = (await quadrants((await convertPhoto(reference, DEFAULT_IMAGE_LIMITS)).bytes)).colours;
    expect(
      near(
        want,
        [
          [217, 106, 96],
          [81, 166, 169],
          [217, 106, 96],
          [81, 166, 169],
        ],
        8,
      ),
    ).toBe(true);
    // Without the marker the samples are still taken as inverted: what Chromium, Firefox, Safari,
    // Pillow and ImageMagick do, since nearly every CMYK JPEG comes from Photoshop (a 4-component JPEG
    // by the standard alone, "straight" CMYK, would show near-black in a browser too).
    for (const transform of [0, 2, "none"] as const) {
      const jpeg = adobeCmykJpeg(8, 8, ink, transform);
      expect((await probeImage(jpeg)).space).toBe("cmyk");
      const got = (await quadrants((await convertPhoto(jpeg, DEFAULT_IMAGE_LIMITS)).bytes)).colours;
      expect(near(got, want, 2), `transform ${transform}: ${JSON.stringify(got)}`).toBe(true);
    }
  });

  it("puts transparent pixels on white in every format that has transparency, whatever colour they hide", async () => {
    // Top right transparent (its hidden colour black), the rest opaque quadrant colours.
    const hiding = QUADS.map((c, q) => (q === 1 ? [0, 0, 0] : c));
    const rgba = Buffer.alloc(96 * 64 * 4);
    for (let i = 0; i < 96 * 64; i++) {
      const q = ((i / 96) | 0) < 32 ? (i % 96 < 48 ? 0 : 1) : i % 96 < 48 ? 2 : 3;
      rgba.set([...(hiding[q] as number[]), q === 1 ? 0 : 255], 4 * i);
    }
    const image = () => sharp(rgba, { raw: { width: 96, height: 64, channels: 4 } });
    // [name, bytes, how far opaque pixels may drift (undefined: greyscale, not compared)]
    const files: Array<[string, Uint8Array, number | undefined]> = [
      ["png", await image().png().toBuffer(), 0],
      ["16-bit png", await image().toColourspace("rgb16").png().toBuffer(), 0],
      ["palette png (tRNS)", await image().png({ palette: true }).toBuffer(), 0],
      ["greyscale png with alpha", await image().toColourspace("b-w").png().toBuffer(), undefined],
      ["gif", await image().gif().toBuffer(), 0],
      ["webp", await image().webp({ lossless: true }).toBuffer(), 0],
      ["avif", await image().avif({ quality: 90, effort: 0 }).toBuffer(), 40],
      [
        "tiff",
        tiff({
          width: 96,
          height: 64,
          bits: [8, 8, 8, 8],
          photometric: 2,
          extra: [2],
          data: new Uint8Array(rgba),
        }),
        0,
      ],
    ];
    for (const [name, bytes, tolerance] of files) {
      const { colours } = await quadrants((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes);
      expect(colours[1], name).toEqual([255, 255, 255]);
      if (tolerance === undefined) continue;
      expect(
        near([colours[0] as number[]], [QUADS[0] as number[]], tolerance),
        `${name}: ${colours[0]}`,
      ).toBe(true);
    }
  });

  it("refuses an animated PNG (APNG) as it does an animated GIF or WebP; allowed, its first frame", async () => {
    // libvips reads only an APNG's default image and reports one page: the acTL chunk says how many.
    const animated = apng([await flat(255, 0, 0), await flat(0, 0, 255)]);
    expect((await refusal(convertPhoto(animated, DEFAULT_IMAGE_LIMITS)))?.message).toBe(
      "The image is animated (2 frames); send a still image.",
    );
    const allowed = { ...DEFAULT_IMAGE_LIMITS, allowAnimated: true };
    expect(await probeImage(animated, allowed)).toMatchObject({ format: "png", pages: 2, animated: true });
    const first = await rgb((await convertPhoto(animated, allowed)).bytes);
    expect([...first.data.subarray(0, 3)]).toEqual([255, 0, 0]);
    // An APNG of one frame is a still.
    expect((await probeImage(apng([await flat(0, 255, 0)]))).animated).toBe(false);
  });

  it("converts a 32-bit float RGB TIFF as linear light, and refuses sample layouts it would turn into wrong colours", async () => {
    // 64×64, left half one colour, right half another.
    const halves = (left: number[], right: number[]) => (i: number) => (i % 64 < 32 ? left : right);
    const tif = (bits: number[], photometric: number, data: Uint8Array, more: object = {}) =>
      tiff({ width: 64, height: 64, bits, photometric, data, ...more });
    const sides = async (bytes: Uint8Array) => {
      const { data } = await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes);
      return [[...data.subarray(3 * 8, 3 * 9)], [...data.subarray(3 * 56, 3 * 57)]];
    };
    // Float RGB is scRGB to libvips (linear, 1.0 white): 0.5 and 0.2 encode as sRGB 188 and 124.
    const float = Float32Array;
    const hdr = tif([32, 32, 32], 2, pixels(64 * 64, halves([0.5, 0.2, 0], [4, 4, 4]), float), {
      sampleFormat: 3,
    });
    expect(await sides(hdr)).toEqual([
      [188, 124, 0],
      [255, 255, 255],
    ]);
    // These decode, but to black or clipped colours: libvips reads float grey and CMYK as 0–255, and
    // 32-bit and signed integers without scaling them.
    const wrong: Array<[string, Uint8Array, string]> = [
      [
        "float grey",
        tif([32], 1, pixels(64 * 64, halves([0.5], [1]), float), { sampleFormat: 3 }),
        "The image stores 32-bit floating-point greyscale pixels; I read 8- and 16-bit images (and 32-bit floating-point RGB) — save it as an 8- or 16-bit image.",
      ],
      [
        "float cmyk",
        tif(
          [32, 32, 32, 32],
          5,
          pixels(64 * 64, () => [0, 0.5, 0.5, 0], float),
          { sampleFormat: 3 },
        ),
        "The image stores 32-bit floating-point CMYK pixels; I read 8- and 16-bit images (and 32-bit floating-point RGB) — save it as an 8- or 16-bit image.",
      ],
      [
        "uint32 rgb",
        tif(
          [32, 32, 32],
          2,
          pixels(64 * 64, () => [2 ** 31, 2 ** 31, 0], Uint32Array),
        ),
        "The image stores 32-bit integer RGB pixels; I read 8- and 16-bit images (and 32-bit floating-point RGB) — save it as an 8- or 16-bit image.",
      ],
      [
        "int8 rgb",
        tif(
          [8, 8, 8],
          2,
          pixels(64 * 64, () => [100, 20, 0]),
          { sampleFormat: 2 },
        ),
        "The image stores 8-bit signed integer RGB pixels; I read 8- and 16-bit images (and 32-bit floating-point RGB) — save it as an 8- or 16-bit image.",
      ],
    ];
    for (const [name, bytes, message] of wrong) {
      expect((await refusal(convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)))?.message, name).toBe(message);
    }
  });

  it("refuses camera raw photos (DNG, CR2, NEF, RAF, ORF, RW2…) by name instead of editing their preview", async () => {
    // Their first image, all libvips reads, is a thumbnail or preview; the photo itself is a raw
    // sensor image in another directory. A CR3 is refused by its brand; DNG, CR2 and NEF start like
    // any TIFF; Olympus and Panasonic change TIFF's magic number, Fujifilm and old Canons have their own.
    const withMagic = (bytes: Uint8Array, magic: string) => {
      const out = new Uint8Array(bytes);
      out.set(Buffer.from(magic, "latin1"));
      return out;
    };
    const preview = {
      width: 128,
      height: 85,
      bits: [8, 8, 8],
      photometric: 2,
      data: pixels(128 * 85, () => [200, 40, 60]),
    };
    const raws: Array<[Uint8Array, string]> = [
      [
        tiff({
          ...preview,
          tags: [
            [254, 4, [1]],
            [50706, 1, [1, 4, 0, 0]],
          ],
        }),
        "a DNG raw photo",
      ],
      [tiff({ ...preview, cr2: true }), "a Canon raw photo (CR2)"],
      // NewSubFileType 1: the first image is a reduced-resolution copy (Nikon, Sony, Pentax raws).
      [tiff({ ...preview, tags: [[254, 4, [1]]] }), "a camera raw photo"],
      [withMagic(tiff(preview), "IIRO"), "an Olympus raw photo (ORF)"],
      [withMagic(tiff(preview), "IIU\0"), "a Panasonic raw photo (RW2)"],
      [withMagic(new Uint8Array(256), "FUJIFILMCCD-RAW 0201FF383501"), "a Fujifilm raw photo (RAF)"],
      [withMagic(new Uint8Array(256), "II\x1a\0\0\0HEAPCCDR"), "a Canon raw photo (CRW)"],
      [withMagic(new Uint8Array(256), "FOVb"), "a Sigma raw photo (X3F)"],
    ];
    for (const [bytes, kind] of raws) {
      expect((await refusal(convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)))?.message).toBe(
        `That file is ${kind}; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.`,
      );
    }
    expect((await convertPhoto(tiff(preview), DEFAULT_IMAGE_LIMITS)).width).toBe(128);
  });

  it("accepts a whole JPEG that lacks only its end marker; a progressive one cut between scans stays incomplete", async () => {
    // Some cameras and apps leave off the final EOI: every pixel is there (browsers show it), but the
    // decoder warns of a premature end. Cut mid-data, the same file is still incomplete.
    const jpeg = await sharp(COFFEE).jpeg({ quality: 90 }).toBuffer();
    const withoutEoi = jpeg.subarray(0, jpeg.byteLength - 2);
    const photo = await convertPhoto(withoutEoi, DEFAULT_IMAGE_LIMITS);
    const whole = await convertPhoto(jpeg, DEFAULT_IMAGE_LIMITS);
    expect(Buffer.compare((await rgb(photo.bytes)).data, (await rgb(whole.bytes)).data)).toBe(0);
    expect((await refusal(convertPhoto(truncated(jpeg, 0.999), DEFAULT_IMAGE_LIMITS)))?.message).toBe(
      FAILURE_TEXTS.truncated,
    );
    // A progressive JPEG cut right before its third scan is a valid, blurrier picture with an end
    // marker added: it must not be taken for a whole one.
    const progressive = await sharp(COFFEE).jpeg({ quality: 90, progressive: true }).toBuffer();
    const scans = [...progressive.keys()].filter(
      (i) => progressive[i] === 0xff && progressive[i + 1] === 0xda,
    );
    const cut = new Uint8Array(progressive.subarray(0, scans[2]));
    expect((await refusal(convertPhoto(cut, DEFAULT_IMAGE_LIMITS)))?.message).toBe(FAILURE_TEXTS.truncated);
  });

  it("says a TIFF cut short is incomplete, as for every other format", async () => {
    // libtiff writes the directory after the pixels (a cut loses it); ours writes it first (a cut loses
    // the strip's end). Both are the upload cut short, not a damaged file.
    const libtiff = await sharp(COFFEE).resize(120, 80).tiff({ compression: "lzw" }).toBuffer();
    const ours = tiff({
      width: 64,
      height: 64,
      bits: [8, 8, 8],
      photometric: 2,
      data: pixels(64 * 64, () => [1, 2, 3]),
    });
    for (const [name, bytes] of [
      ["libtiff", libtiff],
      ["directory first", ours],
    ] as const) {
      for (const fraction of [0.3, 0.9]) {
        const error = await refusal(convertPhoto(truncated(bytes, fraction), DEFAULT_IMAGE_LIMITS));
        expect(error?.message, `${name} cut at ${fraction}`).toBe(FAILURE_TEXTS.truncated);
      }
    }
  });

  it("reads a BigTIFF (TIFF's 64-bit variant) as it reads a TIFF; cut short, it is incomplete", async () => {
    // It was refused as "a BigTIFF image; send a … TIFF …", though libtiff reads it.
    const base = sharp(COFFEE).resize(120, 80);
    const big = await base.clone().tiff({ bigtiff: true, compression: "lzw" }).toBuffer();
    expect(big.subarray(0, 4).toString("latin1")).toBe("II+\0");
    const [got, want] = await Promise.all(
      [big, await base.clone().tiff({ compression: "lzw" }).toBuffer()].map(
        async (bytes) => (await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes)).data,
      ),
    );
    expect(Buffer.compare(got as Buffer, want as Buffer)).toBe(0);
    for (const fraction of [0.3, 0.9]) {
      const error = await refusal(convertPhoto(truncated(big, fraction), DEFAULT_IMAGE_LIMITS));
      expect(error?.message, `cut at ${fraction}`).toBe(FAILURE_TEXTS.truncated);
    }
    // Whole, with its pixels (between the 16-byte header and the directory libtiff writes last)
    // overwritten: damaged, not incomplete (its directory and strips read with 64-bit offsets).
    const damaged = Buffer.from(big);
    damaged.fill(0xff, 16, Number(big.readBigUInt64LE(8)));
    expect((await refusal(convertPhoto(damaged, DEFAULT_IMAGE_LIMITS)))?.message).toBe(FAILURE_TEXTS.damaged);
  });

  it("names an SVG that starts with a comment, and an HTML page, for what they are", async () => {
    const said = async (text: string) =>
      (await refusal(convertPhoto(new TextEncoder().encode(text), DEFAULT_IMAGE_LIMITS)))?.message;
    const send = "send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.";
    expect(
      await said('<!-- Generator: Adobe Illustrator --><svg xmlns="http://www.w3.org/2000/svg" width="9"/>'),
    ).toBe(`That file is an SVG image; ${send}`);
    expect(await said("<!DOCTYPE html>\n<html><body><img src=cat.jpg></body></html>")).toBe(
      `That file is a web page (HTML); ${send}`,
    );
    expect(await said("<html lang=en><head><title>cat</title></head></html>")).toBe(
      `That file is a web page (HTML); ${send}`,
    );
  });

  it("converts a PNG, colour or greyscale, through its gAMA and cHRM chunks, as browsers do, unless an sRGB chunk overrides them", async () => {
    // 96×64, a gradient in each channel; expected pixels from the chunks' meaning, computed here: the
    // values decoded by the file's power law, through its primaries (Adobe RGB's published RGB → XYZ
    // matrix and sRGB's XYZ → RGB, both D65), and encoded as sRGB.
    const { stored, png8, png16 } = await gradientPngs(220);
    // The same red values as greyscale (every channel of the result is then the red one's).
    const red = Uint8Array.from({ length: 96 * 64 }, (_, i) => stored[3 * i] as number);
    const grey8 = await sharp(red, { raw: { width: 96, height: 64, channels: 1 } })
      .toColourspace("b-w")
      .png()
      .toBuffer();
    const grey16 = await sharp(
      Uint16Array.from(red, (v) => v * 257),
      { raw: { width: 96, height: 64, channels: 1 } },
    )
      .toColourspace("grey16")
      .png()
      .toBuffer();
    const greyscale = (colours: Float64Array) => colours.map((_, i) => colours[i - (i % 3)] as number);
    const fixed = (...values: number[]) => {
      const body = Buffer.alloc(4 * values.length);
      for (const [k, v] of values.entries()) body.writeUInt32BE(Math.round(v * 100000), 4 * k);
      return body;
    };
    const srgbEncode = (l: number) => {
      const c = Math.min(1, Math.max(0, l));
      return 255 * (c <= 0.0031308 ? 12.92 * c : 1.055 * c ** (1 / 2.4) - 0.055);
    };
    const apply = (m: number[][], v: number[]) =>
      m.map((row) => row.reduce((sum, x, k) => sum + x * (v[k] as number), 0));
    const XYZ_TO_SRGB = [
      [3.2404542, -1.5371385, -0.4985314],
      [-0.969266, 1.8760108, 0.041556],
      [0.0556434, -0.2040259, 1.0572252],
    ];
    const ADOBE_TO_XYZ = [
      [0.5767309, 0.185554, 0.1881852],
      [0.2973769, 0.6273491, 0.0752741],
      [0.0270343, 0.0706872, 0.9911085],
    ];
    const srgbPrimaries = (linear: number[]) => linear;
    const adobePrimaries = (linear: number[]) => apply(XYZ_TO_SRGB, apply(ADOBE_TO_XYZ, linear));
    const expected = (exponent: number, toSrgb: (linear: number[]) => number[]) => {
      const out = new Float64Array(stored.length);
      for (let p = 0; p < stored.length; p += 3) {
        const linear = [0, 1, 2].map((c) => ((stored[p + c] as number) / 255) ** exponent);
        out.set(toSrgb(linear).map(srgbEncode), p);
      }
      return out;
    };
    const adobe: Array<[string, Uint8Array]> = [
      ["gAMA", fixed(1 / 2.2)],
      ["cHRM", fixed(0.3127, 0.329, 0.64, 0.33, 0.21, 0.71, 0.15, 0.06)],
    ];
    const cases: Array<[string, Uint8Array, Float64Array]> = [
      ["linear (gAMA 1.0)", pngWith(png8, [["gAMA", fixed(1)]]), expected(1, srgbPrimaries)],
      ["16-bit linear", pngWith(png16, [["gAMA", fixed(1)]]), expected(1, srgbPrimaries)],
      ["old Mac (gAMA 1/1.8)", pngWith(png8, [["gAMA", fixed(1 / 1.8)]]), expected(1.8, srgbPrimaries)],
      ["Adobe RGB primaries (cHRM)", pngWith(png8, adobe), expected(2.2, adobePrimaries)],
      ["greyscale linear", pngWith(grey8, [["gAMA", fixed(1)]]), greyscale(expected(1, srgbPrimaries))],
      [
        "16-bit greyscale linear",
        pngWith(grey16, [["gAMA", fixed(1)]]),
        greyscale(expected(1, srgbPrimaries)),
      ],
      // The sRGB chunk takes precedence over gAMA and cHRM: the values are sRGB.
      ["sRGB chunk", pngWith(png8, [["sRGB", Uint8Array.of(0)], ...adobe]), Float64Array.from(stored)],
    ];
    for (const [name, bytes, want] of cases) {
      const { data } = await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes);
      let worst = 0;
      for (let i = 0; i < data.length; i++)
        worst = Math.max(worst, Math.abs((data[i] as number) - (want[i] as number)));
      expect(worst, name).toBeLessThanOrEqual(1.5); // rounding, and lcms' curve interpolation
    }
  });

  it("converts an 8- or 16-bit greyscale PNG or TIFF through its grey ICC profile", async () => {
    // Photoshop tags greyscale with grey profiles ("Gray Gamma 1.8"); sharp converts 8-bit grey through
    // them but leaves 16-bit grey as it is. Expected: the values decoded by the power law, encoded as sRGB.
    const stored = Uint8Array.from({ length: 96 * 64 }, (_, i) => 30 + 2 * (i % 96));
    const profile = powerLawProfile(1.8);
    const want = Array.from(stored, (v) => {
      const l = (v / 255) ** 1.8;
      return 255 * (l <= 0.0031308 ? 12.92 * l : 1.055 * l ** (1 / 2.4) - 0.055);
    });
    const raw = { raw: { width: 96, height: 64, channels: 1 } } as const;
    const wide = Uint16Array.from(stored, (v) => v * 257);
    const files: Array<[string, Uint8Array]> = [
      ["8-bit png", pngWithIcc(await sharp(stored, raw).toColourspace("b-w").png().toBuffer(), profile)],
      ["16-bit png", pngWithIcc(await sharp(wide, raw).toColourspace("grey16").png().toBuffer(), profile)],
      [
        "16-bit tiff",
        tiff({
          width: 96,
          height: 64,
          bits: [16],
          photometric: 1,
          data: new Uint8Array(wide.buffer),
          tags: [[34675, 7, [...profile]]], // InterColorProfile
        }),
      ],
    ];
    for (const [name, bytes] of files) {
      const { data } = await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes);
      let worst = 0;
      for (let i = 0; i < data.length; i++)
        worst = Math.max(worst, Math.abs((data[i] as number) - (want[Math.floor(i / 3)] as number)));
      expect(worst, name).toBeLessThanOrEqual(1.5); // rounding, and lcms' curve interpolation
    }
  });

  it("refuses a 12- or 16-bit JPEG in words, not as damaged; reads an 8-bit lossless one", async () => {
    // libjpeg as libvips uses it decodes 8-bit samples only; lossless coding itself it reads.
    const grey = async (bytes: Uint8Array) =>
      (await rgb((await convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)).bytes)).data;
    expect(new Set(await grey(losslessJpeg(64, 64, 200, 8)))).toEqual(new Set([200]));
    for (const [precision, value] of [
      [12, 3000],
      [16, 50000],
    ] as const) {
      const error = await refusal(convertPhoto(losslessJpeg(64, 64, value, precision), DEFAULT_IMAGE_LIMITS));
      expect(error?.message).toBe(
        `The image is a ${precision}-bit JPEG, which I cannot read (I read 8-bit JPEGs, what cameras and phones write); save it as an 8-bit JPEG, or as a 16-bit PNG.`,
      );
    }
  });

  it("names a PostScript or EPS file, plain or with the DOS EPS binary header, not as a text file", async () => {
    const eps = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\n";
    // DOS EPS: magic, then where the PostScript section starts and how long it is (little-endian).
    const header = Buffer.alloc(30);
    header.set([0xc5, 0xd0, 0xd3, 0xc6]);
    header.writeUInt32LE(30, 4);
    header.writeUInt32LE(eps.length, 8);
    for (const bytes of [new TextEncoder().encode(eps), Buffer.concat([header, Buffer.from(eps)])]) {
      expect((await refusal(convertPhoto(bytes, DEFAULT_IMAGE_LIMITS)))?.message).toBe(
        "That file is a PostScript or EPS file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image.",
      );
    }
  });

  it("refuses a TIFF with extra channels (Photoshop's saved selections) in words, not as damaged", async () => {
    // RGB, its alpha, and one more channel: the conversion to sRGB cannot take the fifth band.
    const extra = tiff({
      width: 64,
      height: 64,
      bits: [8, 8, 8, 8, 8],
      photometric: 2,
      extra: [2, 0],
      data: pixels(64 * 64, () => [200, 40, 60, 255, 10]),
    });
    expect((await refusal(convertPhoto(extra, DEFAULT_IMAGE_LIMITS)))?.message).toBe(
      "The image has 5 channels: RGB, alpha and 1 more; save it without the extra channels (as a PNG, say).",
    );
    // One alpha channel is transparency: flattened onto white.
    const rgba = tiff({
      width: 64,
      height: 64,
      bits: [8, 8, 8, 8],
      photometric: 2,
      extra: [2],
      data: pixels(64 * 64, (i) => (i % 64 < 32 ? [200, 40, 60, 255] : [0, 0, 0, 0])),
    });
    const { data } = await rgb((await convertPhoto(rgba, DEFAULT_IMAGE_LIMITS)).bytes);
    expect([[...data.subarray(24, 27)], [...data.subarray(168, 171)]]).toEqual([
      [200, 40, 60],
      [255, 255, 255],
    ]);
  });
});

describe("convertPhoto in-process (what each decoder runs)", () => {
  it("answers the same as through the pool for a good and a broken file", async () => {
    expect((await convertPhoto(COFFEE, DEFAULT_IMAGE_LIMITS)).width).toBe(600);
    expect((await refusal(convertPhoto(truncated(COFFEE, 0.5), DEFAULT_IMAGE_LIMITS)))?.message).toBe(
      FAILURE_TEXTS.truncated,
    );
  });
});
