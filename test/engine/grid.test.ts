import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { tensorToRgb, tileGrid, tileToPng } from "../../src/engine/grid.js";

/** A [3,H,W] tensor of one colour given in [-1, 1]. */
function solid(w: number, h: number, rgb: [number, number, number]): Float32Array {
  const t = new Float32Array(3 * w * h);
  rgb.forEach((v, c) => {
    t.fill(v, c * w * h, (c + 1) * w * h);
  });
  return t;
}

async function pixel(png: Buffer, x: number, y: number): Promise<number[]> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i], data[i + 1], data[i + 2]] as number[];
}

describe("tile grids", () => {
  it("maps [-1, 1] to 0–255 with rounding and clamping", () => {
    const rgb = tensorToRgb(Float32Array.from([-1, 0, 1, 2, -3, 0.5]), 2, 1);
    expect([...rgb]).toEqual([0, 255, 0, 128, 255, 191]);
  });

  it("lays tiles out in rows with gaps, each tile at its own colour", async () => {
    const red = solid(16, 8, [1, -1, -1]);
    const blue = solid(16, 8, [-1, -1, 1]);
    const tiles = [red, blue, red, blue, red].map((image) => ({ image, width: 16, height: 8 }));
    const png = await tileGrid(tiles, { columns: 2, gap: 2 });
    const meta = await sharp(png).metadata();
    expect([meta.width, meta.height]).toEqual([2 + 2 * 18, 2 + 3 * 10]);
    expect(await pixel(png, 2 + 8, 2 + 4)).toEqual([255, 0, 0]);
    expect(await pixel(png, 2 + 18 + 8, 2 + 4)).toEqual([0, 0, 255]);
    expect(await pixel(png, 2 + 8, 2 + 2 * 10 + 4)).toEqual([255, 0, 0]);
    expect(await pixel(png, 2 + 18 + 8, 2 + 2 * 10 + 4)).toEqual([255, 255, 255]); // empty last cell
    expect(await pixel(png, 1, 1)).toEqual([255, 255, 255]); // gap
  });

  it("draws a label on a tile's corner", async () => {
    const grey = solid(96, 96, [0, 0, 0]);
    const plain = await tileGrid([{ image: grey, width: 96, height: 96 }], { columns: 1 });
    const labelled = await tileGrid([{ image: grey, width: 96, height: 96, label: "3" }], { columns: 1 });
    const a = await sharp(plain).raw().toBuffer();
    const b = await sharp(labelled).raw().toBuffer();
    let differ = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differ++;
    expect(differ).toBeGreaterThan(50);
    expect(await pixel(labelled, 80, 80)).toEqual(await pixel(plain, 80, 80));
  });

  it("writes a full-resolution PNG of one tile", async () => {
    const png = await tileToPng({ image: solid(40, 24, [1, 1, -1]), width: 40, height: 24 });
    expect(await sharp(png).metadata()).toMatchObject({ width: 40, height: 24, format: "png" });
    expect(await pixel(png, 39, 23)).toEqual([255, 255, 0]);
  });
});
