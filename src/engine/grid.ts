import sharp, { type OverlayOptions } from "sharp";

/**
 * Image grids for picking: tiles laid out in rows, each with an optional label in its top-left corner
 * (the number a chat user reacts with, or the seed and η).
 */
export interface Tile {
  /** [3,H,W] (or [1,3,H,W]) in [-1, 1], as the VAE decodes. */
  image: Float32Array;
  width: number;
  height: number;
  label?: string;
}

export interface GridOptions {
  columns: number;
  /** Pixels between tiles and around the grid. */
  gap?: number;
}

/** [3,H,W] in [-1,1] → interleaved 8-bit RGB, rounded and clamped. */
export function tensorToRgb(image: Float32Array, width: number, height: number): Buffer {
  const plane = width * height;
  if (image.length !== 3 * plane)
    throw new RangeError(`tensorToRgb: ${image.length} values for 3×${height}×${width}`);
  const out = Buffer.alloc(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = Math.round(((image[c * plane + i] as number) + 1) * 127.5);
      out[3 * i + c] = Math.min(255, Math.max(0, v));
    }
  }
  return out;
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function labelSvg(text: string, tileWidth: number): Buffer {
  const size = Math.max(10, Math.min(28, Math.round(tileWidth / 12)));
  const w = Math.min(tileWidth, Math.ceil(size * 0.62 * text.length + size));
  const h = Math.ceil(size * 1.5);
  return Buffer.from(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">` +
      `<rect width="${w}" height="${h}" rx="${size / 4}" fill="black" fill-opacity="0.6"/>` +
      `<text x="${w / 2}" y="${size * 1.1}" font-family="sans-serif" font-size="${size}" fill="white" text-anchor="middle">` +
      `${escapeXml(text)}</text></svg>`,
  );
}

/** One PNG of all tiles, `columns` per row, on white. Tiles may differ in size; cells take the largest. */
export async function tileGrid(tiles: readonly Tile[], opts: GridOptions): Promise<Buffer> {
  if (tiles.length === 0) throw new RangeError("tileGrid: no tiles");
  const gap = opts.gap ?? 4;
  const columns = Math.max(1, Math.min(opts.columns, tiles.length));
  const rows = Math.ceil(tiles.length / columns);
  const cellW = Math.max(...tiles.map((t) => t.width));
  const cellH = Math.max(...tiles.map((t) => t.height));
  const layers: OverlayOptions[] = [];
  tiles.forEach((t, i) => {
    const left = gap + (i % columns) * (cellW + gap);
    const top = gap + Math.floor(i / columns) * (cellH + gap);
    layers.push({
      input: tensorToRgb(t.image, t.width, t.height),
      raw: { width: t.width, height: t.height, channels: 3 },
      left,
      top,
    });
    if (t.label) layers.push({ input: labelSvg(t.label, t.width), left: left + 2, top: top + 2 });
  });
  return sharp({
    create: {
      width: gap + columns * (cellW + gap),
      height: gap + rows * (cellH + gap),
      channels: 3,
      background: { r: 255, g: 255, b: 255 },
    },
  })
    .composite(layers)
    .png()
    .toBuffer();
}

/**
 * One image as PNG at its own resolution, or resized to `resize` (e.g. the photo's original size) with
 * lanczos3, the sharpest of sharp's resamplers for upscaling.
 */
export function tileToPng(t: Tile, resize?: { width: number; height: number }): Promise<Buffer> {
  const image = sharp(tensorToRgb(t.image, t.width, t.height), {
    raw: { width: t.width, height: t.height, channels: 3 },
  });
  return (resize ? image.resize(resize.width, resize.height, { fit: "fill", kernel: "lanczos3" }) : image)
    .png()
    .toBuffer();
}
