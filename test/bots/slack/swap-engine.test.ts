// /swap end to end on the real Photoswap pipelines: Bolt ↔ fake Slack (Socket Mode), the form, the queue's
// concept flow, the engine worker (src/engine/worker/photoswap.ts) and the tiny fixture checkpoint on CPU.
// Concept learning is cut to a few steps: this checks the wiring (form, thread, concept, inversion,
// variants, grid, pick, final image, the concept cache, the kept inversion), not image quality.
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RanJob, swapEngineWorld } from "../../helpers/swap-pipelines.js";
import { type World, world } from "./support.js";

/** A 600×400 (3:2) photo as the source: every image the bot posts keeps that aspect ratio. */
const COFFEE = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));
let w: World;
let ran: RanJob[];
let close: () => Promise<void>;

beforeAll(async () => {
  ({ w, ran, close } = await swapEngineWorld(() => world({ timeoutMs: 180_000 })));
});
afterAll(() => close());

describe("/swap on the Photoswap pipelines", () => {
  it("form → thread → learns the subject → variants → pick → final image, 3:2; a second swap reuses the concept and the inversion", async () => {
    const channel = w.channel("swap-engine");
    const swap = (seeds: string) =>
      w.swap(channel, [w.photo("ref.png")], { source: [w.photo("coffee.png", COFFEE)], seeds });
    const started = await swap("0,7");
    const thread = await w.thread(started);
    expect(w.fake.posted(channel.id).find((m) => m.ts === thread)?.text).toBe(
      `🔁 <@${w.author.id}> asked Photoswap for a “cat” from 1 reference photo(s)`,
    );

    const grid = await w.offer(channel, thread, 1, 2);
    expect(grid.text).toContain("1️⃣ seed 0 · φ10 M25 A20 · 2️⃣ seed 7 · φ10 M25 A20");
    const [gridFile] = w.fake.filesOf(grid);
    const gridImage = await sharp(gridFile?.bytes).metadata();
    // The 3:2 photo at the fixture's 64² pixel count (src/spec/shape.ts): two 64×43 tiles, 4-pixel gaps.
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
      w.posted(channel, thread).find((m) => m.text === "✅ Swapped."),
    );

    w.fake.react(w.author, grid, "two");
    const final = await w.fake.waitFor(
      "the final image",
      () => w.posted(channel, thread).find((m) => m.text.includes("*Final*") && m.files.length > 0),
      60_000,
    );
    expect(final.text).toContain("seed 7 · φ10 M25 A20");
    const image = await sharp(w.fake.filesOf(final)[0]?.bytes).metadata();
    expect([image.format, image.width, image.height]).toEqual(["png", 64, 43]);

    // The same reference and subject: the concept comes from the cache, no second learning job; and the
    // photo's inversion from the worker's memory: the second swap goes straight to swapping.
    const second = await w.thread(await swap("3"));
    await w.offer(channel, second, 1, 1);
    expect(ran.slice(2)).toMatchObject([{ name: "swap.edit", stages: ["encode", "swap", "decode"] }]);
  }, 300_000);
});
