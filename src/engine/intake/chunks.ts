// The chunk structure of PNG files and the box structure of ISO base media files (HEIF, AVIF), walked
// from the bytes without decoding anything: what intake asks of them before libvips sees them (does the
// file end where it says? is the PNG animated? how does a HEIF declare its colours?), and the one chunk
// intake writes (png-gamma.ts's profile).
import { crc32 } from "node:zlib";

/** One PNG chunk: its type, where its data starts and where the chunk (CRC included) ends. */
export interface PngChunk {
  type: string;
  start: number;
  /** May lie past the end of a file cut short. */
  end: number;
}

/** The chunks of a PNG after its signature, as far as their headers lie within the file. */
export function* pngChunks(png: Uint8Array): Generator<PngChunk> {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  for (let at = 8; at + 8 <= png.byteLength; ) {
    const end = at + 12 + view.getUint32(at);
    yield { type: String.fromCharCode(...png.subarray(at + 4, at + 8)), start: at + 8, end };
    at = end;
  }
}

/** A PNG chunk of `type` holding `body`: its length, type, body and CRC, ready to splice into a file. */
export function pngChunk(type: string, body: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + body.byteLength);
  out.writeUInt32BE(body.byteLength, 0);
  out.write(type, 4, "latin1");
  out.set(body, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + body.byteLength)), 8 + body.byteLength);
  return out;
}

/** One ISO BMFF box: its type and where its payload lies (after the 8- or 16-byte header). */
export interface IsoBox {
  type: string;
  start: number;
  end: number;
}

/**
 * The boxes in bytes [from, to), each within its parent (a size of 0 runs to `to`); a box whose size
 * is too small for its header or overruns `to` ends the list.
 */
export function isoBoxes(b: Uint8Array, from: number, to: number): IsoBox[] {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: IsoBox[] = [];
  for (let at = from; at + 8 <= to; ) {
    let size = view.getUint32(at);
    let header = 8;
    if (size === 1 && at + 16 <= to) {
      size = view.getUint32(at + 8) * 2 ** 32 + view.getUint32(at + 12);
      header = 16;
    } else if (size === 0) size = to - at;
    if (size < header || at + size > to) break;
    out.push({
      type: String.fromCharCode(...b.subarray(at + 4, at + 8)),
      start: at + header,
      end: at + size,
    });
    at += size;
  }
  return out;
}
