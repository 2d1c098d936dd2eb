import { describe, expect, it } from "vitest";
import { payloadSchemas } from "../../src/queue/jobs.js";
import {
  checkPhotoShape,
  generationShape,
  parseSize,
  SHAPE_LIMITS,
  type Size,
  type WorkingShape,
  workingShape,
} from "../../src/spec/shape.js";

const SD15 = { native: { width: 512, height: 512 }, multiple: 64 };
const SD2_768 = { native: { width: 768, height: 768 }, multiple: 64 };
/** The tiny fixture checkpoints: sample_size 8, a 4-level VAE and UNet. */
const FIXTURE = { native: { width: 64, height: 64 }, multiple: 64 };

/** Every invariant of a working shape: multiples, content inside, no stretching beyond rounding. */
function expectValid(s: WorkingShape, photo: Size, multiple: number): void {
  expect(s.width % multiple).toBe(0);
  expect(s.height % multiple).toBe(0);
  const c = s.content;
  expect(c.left).toBeGreaterThanOrEqual(0);
  expect(c.top).toBeGreaterThanOrEqual(0);
  expect(c.left + c.width).toBeLessThanOrEqual(s.width);
  expect(c.top + c.height).toBeLessThanOrEqual(s.height);
  // The photo fills one side; the other is centred (the padding splits within a pixel).
  expect(c.width === s.width || c.height === s.height).toBe(true);
  expect(Math.abs(s.width - c.width - 2 * c.left)).toBeLessThanOrEqual(1);
  expect(Math.abs(s.height - c.height - 2 * c.top)).toBeLessThanOrEqual(1);
  // The content has the photo's aspect ratio to the rounding of one pixel on its shorter side.
  const short = Math.min(c.width, c.height);
  expect(
    Math.abs(c.width / c.height - photo.width / photo.height) / (photo.width / photo.height),
  ).toBeLessThan(1 / short);
}

describe("workingShape: equal area, rounded to the model's multiple, padded and cropped back", () => {
  it("puts a 600×400 photo in 640×448 at SD 1.5's multiple of 64, content 640×427 centred", () => {
    const s = workingShape({ width: 600, height: 400 }, SD15);
    expect(s).toEqual({ width: 640, height: 448, content: { left: 0, top: 10, width: 640, height: 427 } });
    expect(workingShape({ width: 400, height: 600 }, SD15)).toEqual({
      width: 448,
      height: 640,
      content: { left: 10, top: 0, width: 427, height: 640 },
    });
    expect(workingShape({ width: 3000, height: 3000 }, SD15)).toEqual({
      width: 512,
      height: 512,
      content: { left: 0, top: 0, width: 512, height: 512 },
    });
    // 4:1 is exactly 1024×256: the same 262 144 pixels as 512².
    expect(workingShape({ width: 2000, height: 500 }, SD15)).toEqual({
      width: 1024,
      height: 256,
      content: { left: 0, top: 0, width: 1024, height: 256 },
    });
  });

  it("keeps every aspect ratio up to 4:1 within ±12.5 % of the model's pixel count, padding at most 12.5 %", () => {
    // Rounding each side to 64 moves the area by at most half a multiple per side: the worst cases are
    // the aspect ratios whose ideal sides fall halfway between multiples (0.875 and 1.125 at 512²).
    for (const model of [SD15, SD2_768]) {
      const area = model.native.width * model.native.height;
      for (let aspect = 1 / 4; aspect <= 4; aspect *= 1.003) {
        for (const w of [600, 4000]) {
          const photo = { width: w, height: Math.round(w / aspect) };
          if (Math.max(photo.width / photo.height, photo.height / photo.width) > 4) continue;
          const s = workingShape(photo, model);
          expectValid(s, photo, model.multiple);
          expect(s.width * s.height).toBeGreaterThanOrEqual(0.875 * area);
          expect(s.width * s.height).toBeLessThanOrEqual(1.125 * area);
          expect(s.content.width * s.content.height).toBeGreaterThanOrEqual(0.875 * s.width * s.height);
        }
      }
    }
  });

  it("gives the tiny fixture's 64² a 3:2 photo as 64×43 in a 64×64 working image", () => {
    const s = workingShape({ width: 600, height: 400 }, FIXTURE);
    expect(s).toEqual({ width: 64, height: 64, content: { left: 0, top: 10, width: 64, height: 43 } });
    expectValid(s, { width: 600, height: 400 }, 64);
  });

  it("honours a requested size exactly: padded to the multiple, the request as content", () => {
    expect(workingShape({ width: 600, height: 400 }, SD15, { width: 512, height: 512 })).toEqual({
      width: 512,
      height: 512,
      content: { left: 0, top: 0, width: 512, height: 512 },
    });
    expect(workingShape({ width: 600, height: 400 }, SD15, { width: 500, height: 300 })).toEqual({
      width: 512,
      height: 320,
      content: { left: 6, top: 10, width: 500, height: 300 },
    });
    expect(generationShape(SD15)).toEqual(
      workingShape({ width: 600, height: 400 }, SD15, { width: 512, height: 512 }),
    );
    expect(generationShape(SD15, { width: 96, height: 64 })).toEqual({
      width: 128,
      height: 64,
      content: { left: 16, top: 0, width: 96, height: 64 },
    });
  });
});

describe("limits, each named in one line", () => {
  it("refuses photos beyond 4:1 and with a side under 64 pixels", () => {
    expect(() => checkPhotoShape({ width: 2100, height: 500 })).toThrow(
      "the photo is 2100×500 pixels, an aspect ratio of 4.20:1; the limit is 4:1 — crop it closer to what should change",
    );
    expect(() => workingShape({ width: 300, height: 1500 }, SD15)).toThrow(
      /aspect ratio of 5\.00:1; the limit is 4:1/,
    );
    expect(() => workingShape({ width: 63, height: 200 }, SD15)).toThrow(
      "the photo is 63×200 pixels; each side must be at least 64 pixels",
    );
    expect(() => checkPhotoShape({ width: 64, height: 256 })).not.toThrow();
    // Just over the limit: as many decimals as it takes to show it is over (4.00 would read as within).
    expect(() => checkPhotoShape({ width: 4001, height: 1000 })).toThrow(
      "the photo is 4001×1000 pixels, an aspect ratio of 4.001:1; the limit is 4:1 — crop it closer to what should change",
    );
  });

  it("parses sizes and refuses ones outside the limits, naming the option", () => {
    expect(parseSize("512")).toEqual({ width: 512, height: 512 });
    expect(parseSize("768x512")).toEqual({ width: 768, height: 512 });
    expect(parseSize(" 500 × 300 ")).toEqual({ width: 500, height: 300 });
    expect(() => parseSize("big")).toThrow(
      '--size must be a side ("512") or width×height ("768x512"), got "big"',
    );
    expect(() => parseSize("32")).toThrow(
      "--size 32×32: each side must be a whole number of pixels from 64 to 2048",
    );
    expect(() => parseSize("2048x1024", "size")).toThrow(
      "size 2048×1024 is 2.10 megapixels; the limit is 1.05 (1024²)",
    );
    expect(() => parseSize("1024x128")).toThrow(
      "--size 1024×128 has an aspect ratio of 8.00:1; the limit is 4:1",
    );
    expect(() => parseSize("2045x511")).toThrow(
      "--size 2045×511 has an aspect ratio of 4.002:1; the limit is 4:1",
    );
  });

  it("the imagic.train payload carries both width and height or neither, within the same limits", () => {
    const base = {
      userId: "u",
      origin: { platform: "console", channel: "c" },
      imageBlobId: "a".repeat(64),
      prompt: "a cat",
    };
    const parse = (options: Record<string, unknown>) =>
      payloadSchemas["imagic.train"].safeParse({ ...base, options });
    expect(parse({ width: 768, height: 512 }).success).toBe(true);
    expect(parse({}).success).toBe(true);
    const issues = (o: Record<string, unknown>) => {
      const r = parse(o);
      return r.success ? [] : r.error.issues.map((i) => i.message);
    };
    expect(issues({ width: 768 })).toEqual(["give both width and height, or neither"]);
    expect(issues({ width: 1024, height: 1536 })).toEqual([
      `width × height must be at most ${SHAPE_LIMITS.maxPixels} pixels (1024²)`,
    ]);
    expect(issues({ width: 1024, height: 128 })).toEqual([
      "width × height must have an aspect ratio of at most 4:1",
    ]);
    expect(issues({ width: 32, height: 64 })).toEqual(["Too small: expected number to be >=64"]);
  });
});
