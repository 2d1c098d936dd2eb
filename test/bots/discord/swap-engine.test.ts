// /swap end to end on the real Photoswap pipelines: discord.js ↔ fake Discord, the queue's concept flow,
// the engine worker (src/engine/worker/photoswap.ts) and the tiny fixture checkpoint on CPU. Concept
// learning is cut to a few steps: this checks the wiring (concept, inversion, seeds × strengths variants,
// grid, pick, final image, the concept cache, the kept inversion, a forced size), not image quality.
import { readFileSync } from "node:fs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RanJob, swapEngineWorld } from "../../helpers/swap-pipelines.js";
import { opt, type World, world } from "./support.js";

const REFERENCE = readFileSync(new URL("../../fixtures/images/coffee.png", import.meta.url));
let w: World;
let ran: RanJob[];
let close: () => Promise<void>;

beforeAll(async () => {
  ({ w, ran, close } = await swapEngineWorld(() => world({ timeoutMs: 180_000 })));
});
afterAll(() => close());

describe("/swap on the Photoswap pipelines", () => {
  it("learns the subject, posts a seeds × strengths grid, posts the pick; a second swap reuses the learned concept; a third at a forced size comes back at that size", async () => {
    const channel = w.fake.addTextChannel("swap-engine");
    const reference = () => w.fake.attachment("coffee.png", REFERENCE, "image/png");
    const options = [opt.string("seeds", "0,7"), opt.string("strengths", "10/25/20,5/15/10")];
    const thread = await w.thread(w.swap(channel, [reference()], options));
    const grid = await w.offer(thread, 1, 4);
    // One row per strength, one column per seed, numbered row by row.
    expect(grid.content).toContain(
      "1️⃣ seed 0 · φ10 M25 A20 · 2️⃣ seed 7 · φ10 M25 A20 · 3️⃣ seed 0 · φ5 M15 A10 · 4️⃣ seed 7 · φ5 M15 A10",
    );
    const gridImage = await sharp(grid.attachments[0]?.bytes).metadata();
    // The 3:2 sample photo at the fixture's 64² pixel count (src/spec/shape.ts): 2 × 2 tiles of 64×43,
    // 4-pixel gaps.
    expect([gridImage.format, gridImage.width, gridImage.height]).toEqual([
      "png",
      2 * 64 + 3 * 4,
      2 * 43 + 3 * 4,
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

    // Tile 4: the second strength's row, seed 7.
    w.fake.react(w.author, grid.id, "4️⃣");
    const final = await w.fake.waitFor(
      "the final image",
      () => w.posted(thread).find((m) => m.content.includes("**Final**")),
      60_000,
    );
    expect(final.content).toContain("seed 7 · φ5 M15 A10");
    const image = await sharp(final.attachments[0]?.bytes).metadata();
    expect([image.format, image.width, image.height]).toEqual(["png", 64, 43]);
    // The final image is the grid's fourth tile, pixel for pixel below the tile's label (top-left, 15
    // pixels high on a 64-wide tile), and not the same seed's tile of the first strength.
    const below = 20;
    const tile = async (bytes: Uint8Array | undefined, left: number, top: number) =>
      sharp(bytes)
        .removeAlpha()
        .extract({ left, top: top + below, width: 64, height: 43 - below })
        .raw()
        .toBuffer();
    const picked = await tile(final.attachments[0]?.bytes, 0, 0);
    expect(picked.equals(await tile(grid.attachments[0]?.bytes, 4 + 64 + 4, 4 + 43 + 4))).toBe(true);
    expect(picked.equals(await tile(grid.attachments[0]?.bytes, 4 + 64 + 4, 4))).toBe(false);

    // The same references and subject: the concept comes from the cache, no second learning job; and the
    // photo's inversion from the worker's memory: the second swap goes straight to swapping.
    const again = await w.thread(w.swap(channel, [reference()], [opt.string("seeds", "3")]));
    await w.offer(again, 1, 1);
    expect(ran.slice(2)).toMatchObject([{ name: "swap.edit", stages: ["encode", "swap", "decode"] }]);

    // `size` forces the working size (portrait 64×96 for a 3:2 landscape photo, which covers it): the
    // photo is inverted again — the kept inversion is of its own shape — and the grid, the preview and the
    // final image come back 64×96.
    const sized = await w.thread(
      w.swap(channel, [reference()], [opt.string("seeds", "3,"), opt.string("size", "64x96")]),
    );
    const sizedGrid = await w.offer(sized, 1, 1);
    expect(ran.slice(3)).toMatchObject([
      { name: "swap.edit", stages: ["encode", "invert", "swap", "decode"] },
    ]);
    const sizedGridImage = await sharp(sizedGrid.attachments[0]?.bytes).metadata();
    expect([sizedGridImage.width, sizedGridImage.height]).toEqual([64 + 2 * 4, 96 + 2 * 4]);
    const [sizedPreview] = ran[3]?.previews ?? [];
    expect(await sharp(sizedPreview?.png).metadata()).toMatchObject({ width: 64, height: 96 });
    w.fake.react(w.author, sizedGrid.id, "1️⃣");
    const sizedFinal = await w.fake.waitFor(
      "the sized swap's final image",
      () => w.posted(sized).find((m) => m.content.includes("**Final**")),
      60_000,
    );
    const sizedImage = await sharp(sizedFinal.attachments[0]?.bytes).metadata();
    expect([sizedImage.width, sizedImage.height]).toEqual([64, 96]);
  }, 300_000);
});
