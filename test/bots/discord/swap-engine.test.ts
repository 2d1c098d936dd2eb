// /swap end to end on the real Photoswap pipelines: discord.js ↔ fake Discord, the queue's concept flow,
// the engine worker (src/engine/worker/photoswap.ts) and the tiny fixture checkpoint on CPU. Concept
// learning is cut to a few steps: this checks the wiring (concept, inversion, variants, grid, pick, final
// image, the concept cache, the kept inversion), not image quality.
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { enginePipelines } from "../../../src/engine/worker/pipelines.js";
import { opt, type World, world } from "./support.js";

const MODEL = new URL("../../fixtures/models/sd1/model", import.meta.url).pathname;
const REFERENCE = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));
let w: World;
let sd: StableDiffusion;
let conceptJobs = 0;

beforeAll(async () => {
  sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  w = await world({ timeoutMs: 180_000 });
  await w.startBot();
  const pipelines = enginePipelines(sd, {
    swap: { concept: { steps: 2, prior: { images: 1, steps: 2 } } },
  });
  const learn = pipelines["swap.concept"];
  if (!learn) throw new Error("the engine has no swap.concept pipeline");
  await w.worker(
    {
      ...pipelines,
      "swap.concept": (ctx) => {
        conceptJobs++;
        return learn(ctx);
      },
    },
    { lockDurationMs: 60_000, stalledIntervalMs: 30_000 },
  );
});
afterAll(async () => {
  await w.close();
  await sd.release();
});

describe("/swap on the Photoswap pipelines", () => {
  it("learns the subject, posts the variants, posts the pick; a second swap reuses the learned concept", async () => {
    const channel = w.fake.addTextChannel("swap-engine");
    const reference = () => w.fake.attachment("coffee.png", REFERENCE, "image/png");
    const seeds = opt.string("seeds", "0,7");
    const thread = await w.thread(w.swap(channel, [reference()], [seeds]));
    const grid = await w.offer(thread, 1, 2);
    expect(grid.content).toContain("1️⃣ seed 0 · φ10 M25 A20 · 2️⃣ seed 7 · φ10 M25 A20");
    const gridImage = await sharp(grid.attachments[0]?.bytes).metadata();
    // The 3:2 sample photo at the fixture's 64² pixel count (src/spec/shape.ts): two 64×43 tiles, 4-pixel gaps.
    expect([gridImage.format, gridImage.width, gridImage.height]).toEqual([
      "png",
      2 * 64 + 3 * 4,
      43 + 2 * 4,
    ]);
    const progress = w.posted(thread)[0];
    for (const stage of [
      /drawing images of the subject's class|learning the subject/,
      /inverting the photo/,
      /swapping the subject/,
    ])
      expect(
        progress?.history.some((h) => stage.test(h.content)),
        String(stage),
      ).toBe(true);

    w.fake.react(w.author, grid.id, "2️⃣");
    const final = await w.fake.waitFor(
      "the final image",
      () => w.posted(thread).find((m) => m.content.includes("**Final**")),
      60_000,
    );
    expect(final.content).toContain("seed 7 · φ10 M25 A20");
    const image = await sharp(final.attachments[0]?.bytes).metadata();
    expect([image.format, image.width, image.height]).toEqual(["png", 64, 43]);
    expect(conceptJobs).toBe(1);

    // The same references and subject: the concept comes from the cache, no second learning job.
    const again = await w.thread(w.swap(channel, [reference()], [opt.string("seeds", "3")]));
    await w.offer(again, 1, 1);
    expect(conceptJobs).toBe(1);
    // …and the photo's inversion from the worker's memory: the second swap goes straight to swapping.
    const second = w.posted(again)[0];
    expect(second?.history.some((h) => /swapping the subject/.test(h.content))).toBe(true);
    expect(second?.history.some((h) => /inverting the photo/.test(h.content))).toBe(false);
  }, 300_000);
});
