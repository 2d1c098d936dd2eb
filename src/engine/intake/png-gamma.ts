// A PNG may say what its values mean with gAMA (the encoding's power law) and cHRM (its primaries and
// white) instead of an ICC profile. Browsers honour them when no iCCP or sRGB chunk overrides them, as
// the PNG specification orders; libvips converts through profiles only and would read such values as
// sRGB: a linear-light PNG (gAMA 1.0) much darker, one from an old Mac (gAMA 1/1.8) a little darker.
// So the chunks are written as the profile they describe, an iCCP chunk libvips does read.
import { deflateSync } from "node:zlib";
import { pngChunk, pngChunks } from "./chunks.js";

type Vec3 = [number, number, number];
type Mat3 = [Vec3, Vec3, Vec3];

/** sRGB's primaries and white (D65) as cHRM gives them: white x, y, then red, green and blue. */
const SRGB_CHROMATICITIES = [0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06];
/** The gAMA that sRGB-aware writers put beside sRGB values (1/2.2): taken as sRGB, nothing to convert. */
const SRGB_GAMMA = 0.45455;
/** ICC's profile connection space white, D50. */
const D50: Vec3 = [0.9642, 1, 0.8249];
/** Bradford's cone response matrix, for adapting the file's white to D50 as ICC v2 colorants need. */
const BRADFORD: Mat3 = [
  [0.8951, 0.2664, -0.1614],
  [-0.7502, 1.7135, 0.0367],
  [0.0389, -0.0685, 1.0296],
];

const dot = (u: Vec3, v: Vec3) => u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
const column = (m: Mat3, j: number): Vec3 => m.map((row) => row[j] as number) as Vec3;
const times = (m: Mat3, v: Vec3): Vec3 => m.map((row) => dot(row, v)) as Vec3;
const product = (a: Mat3, b: Mat3): Mat3 =>
  a.map((row) => [0, 1, 2].map((j) => dot(row, column(b, j)))) as Mat3;
const diagonal = (v: Vec3): Mat3 => [
  [v[0], 0, 0],
  [0, v[1], 0],
  [0, 0, v[2]],
];
function inverse(m: Mat3): Mat3 {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  return [
    [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
    [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
    [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
  ];
}
/** XYZ (Y = 1) of chromaticity x, y. */
const xyz = (x: number, y: number): Vec3 => [x / y, 1, (1 - x - y) / y];

/** The D50-adapted XYZ of each primary (the columns of RGB → XYZ), from cHRM's chromaticities. */
function colorants([wx, wy, rx, ry, gx, gy, bx, by]: number[]): Mat3 {
  const white = xyz(wx as number, wy as number);
  const [r, g, b] = [
    xyz(rx as number, ry as number),
    xyz(gx as number, gy as number),
    xyz(bx as number, by as number),
  ];
  const primaries: Mat3 = [0, 1, 2].map((k) => [r[k], g[k], b[k]]) as Mat3;
  // Each primary scaled by its share of the white, then the white adapted to D50 in cone space.
  const toXyz = product(primaries, diagonal(times(inverse(primaries), white)));
  const [from, to] = [times(BRADFORD, white), times(BRADFORD, D50)];
  const adapt = product(
    inverse(BRADFORD),
    product(diagonal(to.map((v, k) => v / (from[k] as number)) as Vec3), BRADFORD),
  );
  return product(adapt, toXyz);
}

/**
 * An ICC v2 display profile whose values are light raised to 1 / `gamma` (a pure power law): of RGB with
 * `primaries` (their D50-adapted XYZ, as columns), or of grey without them.
 */
export function powerLawProfile(gamma: number, primaries?: Mat3): Uint8Array {
  const s15 = (v: number) => Math.round(v * 65536);
  const xyzTag = (v: Vec3) => ["XYZ ", 0, ...v.map(s15)] as const;
  const text = `power law ${gamma.toFixed(2)}`;
  // Tag data, each 4-byte aligned: [signature, bytes].
  const tags: Array<[string, Uint8Array]> = [];
  const data = (...parts: Array<string | number>) => {
    const out = Buffer.alloc(parts.reduce<number>((n, p) => n + (typeof p === "string" ? p.length : 4), 0));
    let at = 0;
    for (const p of parts) {
      if (typeof p === "string") at += out.write(p, at, "latin1");
      else at = out.writeInt32BE(p, at);
    }
    return out;
  };
  // textDescriptionType: the ASCII description (with its NUL), no Unicode, no ScriptCode (67 bytes).
  const desc = Buffer.concat([data("desc", 0, text.length + 1, text), Buffer.alloc(1 + 8 + 3 + 67)]);
  tags.push(["desc", desc], ["wtpt", data(...xyzTag(D50))]);
  const curve = Buffer.concat([data("curv", 0, 1), Buffer.alloc(2)]);
  curve.writeUInt16BE(Math.round(gamma * 256), 12); // one entry: the exponent, u8Fixed8
  if (primaries) {
    ["rXYZ", "gXYZ", "bXYZ"].forEach((name, c) => {
      tags.push([name, data(...xyzTag(column(primaries, c)))]);
    });
    for (const name of ["rTRC", "gTRC", "bTRC"]) tags.push([name, curve]);
  } else tags.push(["kTRC", curve]);
  const tableEnd = 128 + 4 + 12 * tags.length;
  const aligned = (n: number) => (n + 3) & ~3;
  const size = tags.reduce((at, [, bytes]) => aligned(at) + bytes.byteLength, tableEnd);
  const out = Buffer.alloc(aligned(size));
  out.writeUInt32BE(out.byteLength, 0);
  out.writeUInt32BE(0x02100000, 8); // version 2.1
  out.write(primaries ? "mntrRGB XYZ " : "mntrGRAYXYZ ", 12, "latin1");
  out.write("acsp", 36, "latin1");
  out.set(data(...D50.map(s15)), 68); // the PCS illuminant
  out.writeUInt32BE(tags.length, 128);
  let at = tableEnd;
  tags.forEach(([name, bytes], i) => {
    at = aligned(at);
    out.write(name, 132 + 12 * i, "latin1");
    out.writeUInt32BE(at, 136 + 12 * i);
    out.writeUInt32BE(bytes.byteLength, 140 + 12 * i);
    out.set(bytes, at);
    at += bytes.byteLength;
  });
  return out;
}

/**
 * `png` with an iCCP chunk after its header that says what its gAMA and cHRM chunks say (no cHRM: sRGB's
 * primaries, as browsers assume); undefined where there is nothing to convert: an iCCP or sRGB chunk
 * (which take precedence), no gAMA, or sRGB's own gamma and primaries. A greyscale PNG gets a grey
 * profile of its gamma (cHRM's primaries do not apply to it).
 */
export function withGammaProfile(png: Uint8Array): Uint8Array | undefined {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let gamma: number | undefined;
  let chromaticities = SRGB_CHROMATICITIES;
  let colourType = 0;
  let headerEnd = 0;
  for (const { type, start, end } of pngChunks(png)) {
    if (type === "IDAT" || end > png.byteLength) break;
    if (type === "IHDR") [colourType, headerEnd] = [png[start + 9] ?? 0, end];
    if (type === "iCCP" || type === "sRGB") return undefined;
    if (type === "gAMA" && end - start >= 8) gamma = view.getUint32(start) / 100000;
    if (type === "cHRM" && end - start >= 36)
      chromaticities = Array.from({ length: 8 }, (_, k) => view.getUint32(start + 4 * k) / 100000);
  }
  if (!gamma || headerEnd === 0) return undefined;
  // Colour types 2 (RGB), 3 (palette) and 6 (RGB with alpha) have colour: bit 1; 0 and 4 are grey.
  const colour = (colourType & 2) !== 0;
  const srgbLike = chromaticities.every((v, k) => Math.abs(v - (SRGB_CHROMATICITIES[k] as number)) < 0.001);
  if ((srgbLike || !colour) && Math.abs(gamma / SRGB_GAMMA - 1) < 0.01) return undefined;
  // Chromaticities that give no primaries (a y of 0, three in a line), or an exponent ICC cannot hold:
  // left as sRGB, as browsers do.
  const primaries = colour ? colorants(chromaticities) : undefined;
  if (!(primaries ?? []).flat().every((v) => Number.isFinite(v) && Math.abs(v) < 32768) || 1 / gamma >= 256)
    return undefined;
  const profile = powerLawProfile(1 / gamma, primaries);
  const chunk = pngChunk(
    "iCCP",
    Buffer.concat([Buffer.from("gAMA and cHRM\0\0", "latin1"), deflateSync(profile)]),
  );
  return Buffer.concat([png.subarray(0, headerEnd), chunk, png.subarray(headerEnd)]);
}
