// Legal images at the edges of what photo tools write, built byte by byte because sharp cannot write
// them: TIFFs of any sample layout (float, 32-bit, extra channels) and camera raws' TIFF headers,
// animated PNGs, Adobe CMYK and YCCK JPEGs, lossless JPEGs of any precision, and ICC profiles added to
// a PNG or a HEIF file.
import { deflateSync } from "node:zlib";
import { BitWriter, segment } from "../../../../src/cli/bench/hostile-images.js";
import { pngChunk, pngChunks } from "../../../../src/engine/intake/chunks.js";

type TiffType = 1 | 3 | 4 | 7;

export interface TiffSpec {
  width: number;
  height: number;
  /** BitsPerSample, one per sample of a pixel. */
  bits: number[];
  /** 1 grey (min is black), 2 RGB, 5 CMYK. */
  photometric: number;
  /** 1 unsigned integer, 2 signed integer, 3 IEEE float. */
  sampleFormat?: number;
  /** ExtraSamples: 0 unspecified, 1 associated alpha, 2 unassociated alpha. */
  extra?: number[];
  /** The pixels, interleaved, rows packed, little-endian. */
  data: Uint8Array;
  /** More tags: [tag, type (1 BYTE, 3 SHORT, 4 LONG, 7 UNDEFINED: bytes, as an ICC profile), values]. */
  tags?: Array<[number, TiffType, number[]]>;
  /** A Canon CR2 header: "CR", version 2 and a raw IFD offset after the TIFF header. */
  cr2?: boolean;
}

/** A little-endian baseline TIFF of one uncompressed strip. */
export function tiff(spec: TiffSpec): Uint8Array {
  const samples = spec.bits.length;
  const tags: Array<[tag: number, type: TiffType, values: number[]]> = [
    [256, 4, [spec.width]],
    [257, 4, [spec.height]],
    [258, 3, spec.bits],
    [259, 3, [1]],
    [262, 3, [spec.photometric]],
    [273, 4, [0]], // StripOffsets: set below
    [277, 3, [samples]],
    [278, 4, [spec.height]],
    [279, 4, [spec.data.byteLength]],
    [284, 3, [1]],
    ...(spec.photometric === 5 ? [[332, 3, [1]] as [number, 3, number[]]] : []),
    ...(spec.extra ? [[338, 3, spec.extra] as [number, 3, number[]]] : []),
    ...(spec.sampleFormat
      ? [[339, 3, new Array(samples).fill(spec.sampleFormat)] as [number, 3, number[]]]
      : []),
    ...(spec.tags ?? []),
  ];
  tags.sort((a, b) => a[0] - b[0]);
  const size = (type: TiffType) => (type === 3 ? 2 : type === 4 ? 4 : 1);
  const outside = tags.reduce(
    (n, [, type, v]) => n + (v.length * size(type) > 4 ? v.length * size(type) : 0),
    0,
  );
  const ifdAt = spec.cr2 ? 16 : 8;
  const ifdLength = 2 + tags.length * 12 + 4;
  const dataAt = ifdAt + ifdLength + outside;
  const out = new Uint8Array(dataAt + spec.data.byteLength);
  const view = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]);
  view.setUint32(4, ifdAt, true);
  if (spec.cr2) out.set([0x43, 0x52, 2, 0], 8);
  view.setUint16(ifdAt, tags.length, true);
  let extraAt = ifdAt + ifdLength;
  tags.forEach(([tag, type, values], i) => {
    const entry = ifdAt + 2 + i * 12;
    const written = tag === 273 ? [dataAt] : values;
    view.setUint16(entry, tag, true);
    view.setUint16(entry + 2, type, true);
    view.setUint32(entry + 4, written.length, true);
    let at = entry + 8;
    if (written.length * size(type) > 4) {
      view.setUint32(at, extraAt, true);
      at = extraAt;
      extraAt += written.length * size(type);
    }
    written.forEach((v, j) => {
      if (size(type) === 1) view.setUint8(at + j, v);
      else if (type === 3) view.setUint16(at + 2 * j, v, true);
      else view.setUint32(at + 4 * j, v, true);
    });
  });
  out.set(spec.data, dataAt);
  return out;
}

/** `count` pixels of `fill(i)`, as the bytes of a `Typed` array. */
export function pixels(
  count: number,
  fill: (i: number) => number[],
  Typed:
    | Uint8ArrayConstructor
    | Uint16ArrayConstructor
    | Uint32ArrayConstructor
    | Float32ArrayConstructor = Uint8Array,
): Uint8Array {
  const samples = fill(0).length;
  const out = new Typed(count * samples);
  for (let i = 0; i < count; i++) out.set(fill(i), i * samples);
  return new Uint8Array(out.buffer);
}

/** The chunks of a PNG after its signature, as [type, body]. */
const chunksOf = (png: Uint8Array): Array<[string, Uint8Array]> =>
  [...pngChunks(png)].map(({ type, start, end }) => [type, png.subarray(start, end - 4)]);

/** `png` with `chunks` ([type, body]) right after its header. */
export function pngWith(png: Uint8Array, chunks: Array<[string, Uint8Array]>): Uint8Array {
  const headerEnd = 8 + 12 + 13; // signature, IHDR
  const added = chunks.map(([type, body]) => pngChunk(type, body));
  return new Uint8Array(Buffer.concat([png.subarray(0, headerEnd), ...added, png.subarray(headerEnd)]));
}

/** `png` with an ICC profile (an iCCP chunk) right after its header. */
export const pngWithIcc = (png: Uint8Array, icc: Uint8Array): Uint8Array =>
  pngWith(png, [["iCCP", Buffer.concat([Buffer.from("icc\0\0", "latin1"), deflateSync(icc)])]]);

/**
 * An animated PNG (APNG) of same-sized non-interlaced PNG `frames`: the first is also the default image
 * (its IDAT), the others fdAT chunks. Decoders without APNG support show the first frame only.
 */
export function apng(frames: Uint8Array[]): Uint8Array {
  const [first, ...rest] = frames.map(chunksOf);
  if (!first) throw new RangeError("apng: no frames");
  const ihdr = first.find(([type]) => type === "IHDR")?.[1] as Uint8Array;
  const head = Buffer.from(ihdr.buffer, ihdr.byteOffset, ihdr.byteLength);
  let sequence = 0;
  const fcTL = () => {
    const body = Buffer.alloc(26);
    body.writeUInt32BE(sequence++, 0);
    body.writeUInt32BE(head.readUInt32BE(0), 4); // width
    body.writeUInt32BE(head.readUInt32BE(4), 8); // height
    body.writeUInt16BE(1, 20); // delay 1/10 s
    body.writeUInt16BE(10, 22);
    return pngChunk("fcTL", body);
  };
  const acTL = Buffer.alloc(8);
  acTL.writeUInt32BE(frames.length, 0); // frames; 0 plays: loop forever
  const parts: Uint8Array[] = [
    Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("acTL", acTL),
    fcTL(),
    ...first.filter(([type]) => type === "IDAT").map(([, body]) => pngChunk("IDAT", body)),
  ];
  for (const frame of rest) {
    parts.push(fcTL());
    for (const [type, body] of frame) {
      if (type !== "IDAT") continue;
      const seq = Buffer.alloc(4);
      seq.writeUInt32BE(sequence++);
      parts.push(pngChunk("fdAT", Buffer.concat([seq, body])));
    }
  }
  parts.push(pngChunk("IEND", new Uint8Array(0)));
  return new Uint8Array(Buffer.concat(parts));
}

/**
 * A baseline 4-component JPEG as Photoshop writes CMYK: an Adobe APP14 segment, the samples stored
 * inverted (255 − ink), and with `transform` 2 coded as YCCK (the inverted C, M, Y as YCbCr; K as is).
 * With `transform` "none", the same CMYK file without its APP14 segment, as metadata strippers leave it.
 * Each 8×8 block is flat: `ink(bx, by)` gives its C, M, Y, K ink (0–255) by block column and row.
 */
export function adobeCmykJpeg(
  blocksWide: number,
  blocksHigh: number,
  ink: (bx: number, by: number) => number[],
  transform: 0 | 2 | "none",
): Uint8Array {
  const [width, height] = [blocksWide * 8, blocksHigh * 8];
  const out = [0xff, 0xd8];
  if (transform !== "none")
    out.push(...segment(0xee, [0x41, 0x64, 0x6f, 0x62, 0x65, 0, 100, 0, 0, 0, 0, transform]));
  out.push(...segment(0xdb, [0, ...new Array(64).fill(1)])); // quantisation: all ones
  out.push(
    ...segment(0xc0, [
      8,
      height >> 8,
      height & 255,
      width >> 8,
      width & 255,
      4,
      ...[1, 2, 3, 4].flatMap((c) => [c, 0x11, 0]),
    ]),
  );
  // DC: the 12 difference categories, 4-bit codes; AC: end-of-block only, coded "0" (flat blocks).
  out.push(
    ...segment(0xc4, [
      0x00,
      0,
      0,
      0,
      12,
      ...new Array(12).fill(0),
      ...Array.from({ length: 12 }, (_, i) => i),
    ]),
  );
  out.push(...segment(0xc4, [0x10, 1, ...new Array(15).fill(0), 0x00]));
  out.push(...segment(0xda, [4, ...[1, 2, 3, 4].flatMap((c) => [c, 0x00]), 0, 63, 0]));
  const bits = new BitWriter();
  const previous = [0, 0, 0, 0];
  for (let by = 0; by < blocksHigh; by++) {
    for (let bx = 0; bx < blocksWide; bx++) {
      const [c, m, y, k] = ink(bx, by).map((v) => 255 - v) as [number, number, number, number];
      const [r, g, b] = [255 - c, 255 - m, 255 - y];
      const samples =
        transform !== 2
          ? [c, m, y, k]
          : [
              0.299 * r + 0.587 * g + 0.114 * b,
              -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
              0.5 * r - 0.418688 * g - 0.081312 * b + 128,
              k,
            ].map((v) => Math.max(0, Math.min(255, Math.round(v))));
      samples.forEach((v, i) => {
        const dc = 8 * (v - 128); // a flat block's DC coefficient
        const diff = dc - (previous[i] as number);
        previous[i] = dc;
        const category = diff === 0 ? 0 : 32 - Math.clz32(Math.abs(diff));
        bits.put(category, 4);
        if (category > 0) bits.put(diff > 0 ? diff : diff + (1 << category) - 1, category);
        bits.put(0, 1); // end of block
      });
    }
  }
  out.push(...bits.end(), 0xff, 0xd9);
  return Uint8Array.from(out);
}

/**
 * A lossless JPEG (SOF3) of one grey component, every sample `value`, of `precision` bits (2–16; libjpeg
 * decodes 8): predictor 1 (the sample to the left), so only the first sample's difference from the
 * initial prediction, 2^(precision − 1), is not 0.
 */
export function losslessJpeg(width: number, height: number, value: number, precision: number): Uint8Array {
  const out = [0xff, 0xd8];
  out.push(...segment(0xc3, [precision, height >> 8, height & 255, width >> 8, width & 255, 1, 1, 0x11, 0]));
  // Difference categories 0–15, 5-bit codes (the all-ones code is not allowed); 16 is not needed here.
  out.push(
    ...segment(0xc4, [
      0x00,
      0,
      0,
      0,
      0,
      16,
      ...new Array(11).fill(0),
      ...Array.from({ length: 16 }, (_, i) => i),
    ]),
  );
  out.push(...segment(0xda, [1, 1, 0x00, 1, 0, 0])); // predictor 1, point transform 0
  const bits = new BitWriter();
  for (let i = 0; i < width * height; i++) {
    const diff = i === 0 ? value - 2 ** (precision - 1) : 0;
    const category = diff === 0 ? 0 : 32 - Math.clz32(Math.abs(diff));
    bits.put(category, 5);
    if (category > 0) bits.put(diff > 0 ? diff : diff + (1 << category) - 1, category);
  }
  out.push(...bits.end(), 0xff, 0xd9);
  return Uint8Array.from(out);
}

/** `heif` with an ICC profile (a `colr` box of type `prof`, as iPhones tag their Display P3 photos). */
export const heifWithIcc = (heif: Uint8Array, icc: Uint8Array): Uint8Array =>
  heifWithColour(heif, "prof", icc);

/**
 * `heif` with colour given by ISO/IEC 23091-2 codes (a `colr` box of type `nclx`): primaries (12: P3-D65),
 * transfer (13: sRGB's), matrix (6: BT.601) and full range.
 */
export const heifWithNclx = (heif: Uint8Array, primaries: number, transfer = 13, matrix = 6): Uint8Array =>
  heifWithColour(
    heif,
    "nclx",
    Uint8Array.from([
      primaries >> 8,
      primaries & 255,
      transfer >> 8,
      transfer & 255,
      matrix >> 8,
      matrix & 255,
      0x80,
    ]),
  );

/**
 * `heif` with a `colr` box of `kind` holding `payload` added to its primary image's properties: the meta
 * boxes grow and every iloc offset moves past them.
 */
function heifWithColour(heif: Uint8Array, kind: "prof" | "nclx", payload: Uint8Array): Uint8Array {
  const b = Buffer.from(heif);
  const size = (at: number) => b.readUInt32BE(at);
  const type = (at: number) => b.toString("ascii", at + 4, at + 8);
  const child = (from: number, end: number, name: string) => {
    for (let at = from; at < end; at += size(at)) if (type(at) === name) return at;
    throw new RangeError(`heifWithColour: no ${name} box`);
  };
  const meta = child(0, b.byteLength, "meta");
  const [pitm, iloc, iprp] = ["pitm", "iloc", "iprp"].map((n) => child(meta + 12, meta + size(meta), n)) as [
    number,
    number,
    number,
  ];
  const [ipco, ipma] = ["ipco", "ipma"].map((n) => child(iprp + 8, iprp + size(iprp), n)) as [number, number];
  const primary = b[pitm + 8] === 0 ? b.readUInt16BE(pitm + 12) : size(pitm + 12);
  let properties = 0;
  for (let at = ipco + 8; at < ipco + size(ipco); at += size(at)) properties++;
  const colr = Buffer.alloc(12 + payload.byteLength);
  colr.writeUInt32BE(colr.byteLength);
  colr.write(`colr${kind}`, 4, "ascii");
  colr.set(payload, 12);
  // ipma: the primary item gets one more association, essential, to the new property.
  const version = b[ipma + 8] as number;
  const wide = ((b[ipma + 11] as number) & 1) === 1;
  const parts: Buffer[] = [b.subarray(ipma + 8, ipma + 16)];
  let at = ipma + 16;
  for (let i = size(ipma + 12); i > 0; i--) {
    const id = version < 1 ? b.readUInt16BE(at) : size(at);
    const idEnd = at + (version < 1 ? 2 : 4);
    const count = b[idEnd] as number;
    const end = idEnd + 1 + count * (wide ? 2 : 1);
    const added = id === primary ? 1 : 0;
    const association = Buffer.alloc(added * (wide ? 2 : 1));
    if (added && wide) association.writeUInt16BE(0x8000 | (properties + 1));
    else if (added) association[0] = 0x80 | (properties + 1);
    parts.push(b.subarray(at, idEnd), Buffer.from([count + added]), b.subarray(idEnd + 1, end), association);
    at = end;
  }
  const newIpma = Buffer.concat([Buffer.alloc(8), ...parts]);
  newIpma.writeUInt32BE(newIpma.byteLength);
  newIpma.write("ipma", 4, "ascii");
  const grown = colr.byteLength + newIpma.byteLength - size(ipma);
  // iloc: the image data lies after meta, so every file offset (construction method 0) moves.
  const locations = Buffer.from(b.subarray(iloc, iloc + size(iloc)));
  const v = locations[8] as number;
  const [offsetSize, lengthSize] = [(locations[12] as number) >> 4, (locations[12] as number) & 15];
  const baseSize = (locations[13] as number) >> 4;
  const indexSize = v === 1 || v === 2 ? (locations[13] as number) & 15 : 0;
  let p = v < 2 ? 16 : 18;
  const move = (bytes: number, shift: boolean) => {
    if (shift && bytes === 4) locations.writeUInt32BE(locations.readUInt32BE(p) + grown, p);
    if (shift && bytes === 8) locations.writeBigUInt64BE(locations.readBigUInt64BE(p) + BigInt(grown), p);
    p += bytes;
  };
  for (let i = v < 2 ? locations.readUInt16BE(14) : locations.readUInt32BE(14); i > 0; i--) {
    p += v < 2 ? 2 : 4;
    let method = 0;
    if (v === 1 || v === 2) {
      method = locations.readUInt16BE(p) & 15;
      p += 2;
    }
    p += 2; // data reference index
    move(baseSize, method === 0);
    const extents = locations.readUInt16BE(p);
    p += 2;
    for (let e = extents; e > 0; e--) {
      p += indexSize;
      move(offsetSize, method === 0 && baseSize === 0);
      p += lengthSize;
    }
  }
  const out = Buffer.concat([
    b.subarray(0, iloc),
    locations,
    b.subarray(iloc + size(iloc), ipco + size(ipco)),
    colr,
    b.subarray(ipco + size(ipco), ipma),
    newIpma,
    b.subarray(ipma + size(ipma)),
  ]);
  for (const box of [meta, iprp]) out.writeUInt32BE(out.readUInt32BE(box) + grown, box);
  out.writeUInt32BE(out.readUInt32BE(ipco) + colr.byteLength, ipco);
  return new Uint8Array(out);
}
