// /swap end to end on the real Photoswap pipelines: discord.js ↔ fake Discord, the queue's concept flow,
// the engine worker (src/engine/worker/photoswap.ts) and the tiny fixture checkpoint on CPU. Concept
// learning is cut to a few steps: this checks the wiring (concept, inversion, variants, grid, pick, final
// image, the concept cache, the kept inversion), not image quality.
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { type RanJob, swapTestPipelines } from "../../helpers/swap-pipelines.js";
import { opt, type World, world } from "./support.js";

const MODEL = new URL("../../fixtures/models/sd1/model", import.meta.url).pathname;
const REFERENCE = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));
let w: World;
let sd: StableDiffusion;
let ran: RanJob[];

beforeAll(async () => {
  sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
  w = await world({ timeoutMs: 180_000 });
  await w.startBot();
  const swap = swapTestPipelines(sd);
  ran = swap.ran;
  await w.worker(swap.pipelines, { lockDurationMs: 60_000, stalledIntervalMs: 30_000 });
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
    // The concept was learned (class images, references encoded, training), then the photo inverted and
    // swapped; the thread's progress message ends on the result.
    expect(ran).toMatchObject([
      { name: "swap.concept", stages: ["class-images", "encode", "concept"] },
      { name: "swap.edit", stages: ["encode", "invert", "swap", "decode"] },
    ]);
    // The swap's first step sent a preview: the first variant's estimate, decoded, at the photo's shape.
    const [preview] = ran[1]?.previews ?? [];
    expect(preview?.stage).toBe("swap");
    expect(await sharp(preview?.png).metadata()).toMatchObject({ format: "png", width: 64, height: 43 });
    await w.fake.waitFor("the progress message's last word", () =>
      w.posted(thread).find((m) => m.content === "✅ Swapped."),
    );

    w.fake.react(w.author, grid.id, "2️⃣");
    const final = await w.fake.waitFor(
      "the final image",
      () => w.posted(thread).find((m) => m.content.includes("**Final**")),
      60_000,
    );
    expect(final.content).toContain("seed 7 · φ10 M25 A20");
    const image = await sharp(final.attachments[0]?.bytes).metadata();
    expect([image.format, image.width, image.height]).toEqual(["png", 64, 43]);

    // The same references and subject: the concept comes from the cache, no second learning job; and the
    // photo's inversion from the worker's memory: the second swap goes straight to swapping.
    const again = await w.thread(w.swap(channel, [reference()], [opt.string("seeds", "3")]));
    await w.offer(again, 1, 1);
    expect(ran.slice(2)).toMatchObject([{ name: "swap.edit", stages: ["encode", "swap", "decode"] }]);
  }, 300_000);
});
