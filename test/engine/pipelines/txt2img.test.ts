/**
 * txt2img beyond the parity suite's golden run: seeding, guidance off, cancellation, bad input, and the
 * `edit txt2img` CLI writing the pipeline's image as a PNG.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildProgram } from "../../../src/cli/program.js";
import { CancelledError } from "../../../src/engine/errors.js";
import { cropImage, tensorToPng } from "../../../src/engine/image.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { txt2img } from "../../../src/engine/pipelines/txt2img.js";
import { relError } from "../../helpers/golden.js";

const MODEL = "test/fixtures/models/sd1/model";

describe("txt2img", () => {
  let sd: StableDiffusion;
  const base = {
    prompt: "a photo of a cat",
    negativePrompt: "",
    steps: 3,
    guidance: 7.5,
    height: 64,
    width: 64,
  };

  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("is a function of the seed: the same seed repeats, another differs", async () => {
    const a = await txt2img(sd, { ...base, seed: 1 });
    const b = await txt2img(sd, { ...base, seed: 1 });
    const c = await txt2img(sd, { ...base, seed: 2 });
    expect(b.image).toEqual(a.image);
    expect(relError(c.latents, a.latents)).toBeGreaterThan(0.1);
    expect(a.image.length).toBe(3 * 64 * 64);
  });

  it("guidance ≤ 1 runs the prompt alone, and guidance changes the result", async () => {
    const steps: number[] = [];
    const plain = await txt2img(sd, { ...base, guidance: 1, seed: 1, onStep: (i) => steps.push(i) });
    const guided = await txt2img(sd, { ...base, seed: 1 });
    expect(steps).toEqual([1, 2, 3]);
    expect(relError(plain.latents, guided.latents)).toBeGreaterThan(1e-3);
  });

  it("stops between steps when cancelled", async () => {
    const controller = new AbortController();
    const run = txt2img(sd, {
      ...base,
      seed: 1,
      signal: controller.signal,
      onStep: (i) => {
        if (i === 1) controller.abort();
      },
    });
    await expect(run).rejects.toThrow(CancelledError);
    await expect(run).rejects.toThrow(/step 2\/3/);
  });

  it("refuses bad settings with a message naming them", async () => {
    await expect(txt2img(sd, { ...base, steps: 0 })).rejects.toThrow(/steps must be an integer in 1…1000/);
    await expect(txt2img(sd, { ...base, height: 60 })).rejects.toThrow(
      /image height 60 is not a positive multiple of the VAE's factor 8/,
    );
    await expect(txt2img(sd, { ...base, latents: new Float32Array(5) })).rejects.toThrow(
      /latents hold 5 values/,
    );
  });

  it("`edit txt2img` writes the pipeline's image as a PNG", async () => {
    const out = join(mkdtempSync(join(tmpdir(), "txt2img-")), "cat.png");
    await buildProgram().parseAsync([
      "node",
      "cli",
      "edit",
      "txt2img",
      "--prompt",
      base.prompt,
      "--out",
      out,
      "--model",
      MODEL,
      "--device",
      "cpu",
      "--seed",
      "5",
      "--steps",
      "3",
    ]);
    const png = readFileSync(out);
    const meta = await sharp(png).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["png", 64, 64]);
    const { image } = await txt2img(sd, { ...base, seed: 5 });
    const expected = await sharp(await tensorToPng(image, [3, 64, 64]))
      .raw()
      .toBuffer();
    const written = await sharp(png).raw().toBuffer();
    expect(written.equals(expected)).toBe(true);
  });

  it("`edit txt2img --size 96x64` samples at 128×64 (the fixture's multiple of 64) and crops the centre 96×64", async () => {
    const out = join(mkdtempSync(join(tmpdir(), "txt2img-")), "wide.png");
    const args = ["--prompt", base.prompt, "--out", out, "--model", MODEL, "--device", "cpu", "--seed", "5"];
    await buildProgram().parseAsync([
      "node",
      "cli",
      "edit",
      "txt2img",
      ...args,
      "--steps",
      "3",
      "--size",
      "96x64",
    ]);
    const png = readFileSync(out);
    expect(await sharp(png).metadata()).toMatchObject({ width: 96, height: 64 });
    const { image } = await txt2img(sd, { ...base, height: 64, width: 128, seed: 5 });
    const centre = cropImage(image, { width: 128, height: 64 }, { left: 16, top: 0, width: 96, height: 64 });
    const expected = await sharp(await tensorToPng(centre, [3, 64, 96]))
      .raw()
      .toBuffer();
    expect((await sharp(png).raw().toBuffer()).equals(expected)).toBe(true);
  });
});
