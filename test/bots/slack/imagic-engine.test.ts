// /imagic end to end on the real Imagic pipeline: Bolt ↔ fake Slack (Socket Mode), the queue, the engine
// worker's pipelines (src/engine/worker/pipelines.ts) and the tiny fixture checkpoint on CPU. Training is
// cut to a few steps: this checks the wiring (form, thread, progress, state, grids, sweep, final image),
// not image quality.
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { enginePipelines } from "../../../src/engine/worker/pipelines.js";
import { type World, world } from "./support.js";

const MODEL = new URL("../../fixtures/models/sd1/model", import.meta.url).pathname;
/** A 600×400 (3:2) photo: every image the bot posts keeps that aspect ratio. */
const COFFEE = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));
let w: World;
let sd: StableDiffusion;

beforeAll(async () => {
  sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  w = await world({
    commands: { embeddingSteps: 2, finetuneSteps: 2, steps: 2 },
    timeoutMs: 180_000,
  });
  await w.startBot();
  // Compiling ONNX sessions holds the event loop for seconds: a production-length lock, not the
  // queue tests' 1 s one, so the running job is not taken for stalled.
  await w.worker(enginePipelines(sd), { lockDurationMs: 60_000, stalledIntervalMs: 30_000 });
});
afterAll(async () => {
  await w.close();
  await sd.release();
});

describe("/imagic on the Imagic pipeline", () => {
  it("form → thread → progress → seed grid → η sweep from the cached state → final image, all 3:2", async () => {
    const photo = w.photo("coffee.png", COFFEE);
    const started = await w.imagic(w.channel("engine"), { image: [photo], seeds: "3,4", preset: "fast" });
    const thread = await w.thread(started);

    const grid = await w.offer(started.channel, thread, 1, 2);
    expect(grid.text).toContain("1️⃣ seed 3 · 2️⃣ seed 4");
    const [gridFile] = w.fake.filesOf(grid);
    const gridImage = await sharp(gridFile?.bytes).metadata();
    // The fixture's 64² pixel count at 3:2 (src/spec/shape.ts): 64×43 tiles, 2 in a row, 4-pixel gaps.
    expect([gridImage.format, gridImage.width, gridImage.height]).toEqual([
      "png",
      2 * 64 + 3 * 4,
      43 + 2 * 4,
    ]);
    const progress = w.posted(started.channel, thread)[0];
    await w.fake.waitFor("the progress message's last word", () => progress?.text.startsWith("✅"));
    expect(
      progress?.history.some((h) =>
        /optimizing the text embedding|fine-tuning the model|rendering/.test(h.text),
      ),
    ).toBe(true);
    expect(progress?.text).toBe("✅ Fine-tuned on your photo.");

    w.fake.react(w.author, grid, "one");
    const sweep = await w.offer(started.channel, thread, 2, 5);
    expect(sweep.text).toContain("1️⃣ η 0.6, seed 3");
    const [sweepFile] = w.fake.filesOf(sweep);
    const sweepImage = await sharp(sweepFile?.bytes).metadata();
    expect([sweepImage.width, sweepImage.height]).toEqual([5 * 64 + 6 * 4, 43 + 2 * 4]);

    w.fake.react(w.author, sweep, "four");
    const final = await w.fake.waitFor(
      "the final image",
      () => w.posted(started.channel, thread).find((m) => m.text.includes("*Final*") && m.files.length > 0),
      60_000,
    );
    expect(final.text).toContain("seed 3, η 1.2");
    const image = await sharp(w.fake.filesOf(final)[0]?.bytes).metadata();
    expect([image.format, image.width, image.height]).toEqual(["png", 64, 43]);
  }, 240_000);
});
