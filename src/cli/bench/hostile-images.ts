// Hostile and broken uploads, generated (for `bench intake` and the intake tests): no sample of them is
// committed.

/** A JPEG marker segment: 0xff, marker, a 2-byte length, the body. */
export function segment(marker: number, body: number[]): Uint8Array {
  return Uint8Array.from([0xff, marker, (body.length + 2) >> 8, (body.length + 2) & 0xff, ...body]);
}

/** Huffman-coded bits, MSB first, with JPEG's byte stuffing (0xff → 0xff 0x00) and 1-bit padding. */
export class BitWriter {
  private readonly bytes: number[] = [];
  private acc = 0;
  private n = 0;

  put(code: number, length: number): void {
    for (let i = length - 1; i >= 0; i--) {
      this.acc = (this.acc << 1) | ((code >> i) & 1);
      if (++this.n === 8) {
        this.bytes.push(this.acc);
        if (this.acc === 0xff) this.bytes.push(0);
        this.acc = 0;
        this.n = 0;
      }
    }
  }

  end(): Uint8Array {
    if (this.n > 0) this.put((1 << (8 - this.n)) - 1, 8 - this.n);
    return Uint8Array.from(this.bytes);
  }
}

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
};

/**
 * A valid progressive JPEG of a flat grey width × height image whose every AC coefficient of each of
 * its 3 components arrives in its own scan, refined one bit plane at a time (successive approximation
 * from bit 13, the most libjpeg accepts): 1 + 3 × 63 × 14 = 2647 scans. Each AC scan is a few
 * end-of-band runs (a few dozen bytes), yet the decoder walks every block of the component per scan.
 */
export function progressiveScanBomb(width: number, height: number): { bytes: Uint8Array; scans: number } {
  const blocks = Math.ceil(width / 8) * Math.ceil(height / 8);
  const components = [1, 2, 3];
  const parts: Uint8Array[] = [Uint8Array.from([0xff, 0xd8])];
  parts.push(segment(0xdb, [0, ...new Array(64).fill(1)])); // quantisation table 0: all ones
  parts.push(
    segment(0xc2, [
      8,
      height >> 8,
      height & 255,
      width >> 8,
      width & 255,
      3,
      ...components.flatMap((c) => [c, 0x11, 0]),
    ]),
  );
  // DC table 0: the single symbol "difference category 0", coded "0".
  parts.push(segment(0xc4, [0x00, 1, ...new Array(15).fill(0), 0]));
  // AC table 0: end-of-band runs EOB0…EOB14 (symbols r << 4), 4-bit codes.
  parts.push(
    segment(0xc4, [
      0x10,
      0,
      0,
      0,
      15,
      ...new Array(12).fill(0),
      ...Array.from({ length: 15 }, (_, r) => r << 4),
    ]),
  );
  // The DC scan, all components interleaved: every block's DC difference is 0 (mid-grey).
  parts.push(segment(0xda, [3, ...components.flatMap((c) => [c, 0x00]), 0, 0, 0]));
  const dc = new BitWriter();
  for (let i = 0; i < 3 * blocks; i++) dc.put(0, 1);
  parts.push(dc.end());
  // Every block of a component is zero in any band: end-of-band runs of up to 32767 blocks cover it.
  const runs = new BitWriter();
  for (let left = blocks; left > 0; ) {
    const run = Math.min(left, 32767);
    const r = 31 - Math.clz32(run);
    runs.put(r, 4);
    if (r > 0) runs.put(run - (1 << r), r);
    left -= run;
  }
  const data = runs.end();
  let scans = 1;
  for (const c of components) {
    for (let k = 1; k <= 63; k++) {
      for (let al = 13; al >= 0; al--) {
        const ah = al === 13 ? 0 : al + 1;
        parts.push(segment(0xda, [1, c, 0x00, k, k, (ah << 4) | al]), data);
        scans++;
      }
    }
  }
  parts.push(Uint8Array.from([0xff, 0xd9]));
  return { bytes: concat(parts), scans };
}

/** The JPEG without its Huffman tables (every DHT segment before the first scan dropped). */
export function withoutHuffmanTables(jpeg: Uint8Array): Uint8Array {
  const kept: Uint8Array[] = [jpeg.subarray(0, 2)];
  let i = 2;
  while (i < jpeg.byteLength) {
    const marker = jpeg[i + 1] as number;
    if (marker === 0xda) {
      kept.push(jpeg.subarray(i));
      break;
    }
    const end = i + 2 + (((jpeg[i + 2] as number) << 8) | (jpeg[i + 3] as number));
    if (marker !== 0xc4) kept.push(jpeg.subarray(i, end));
    i = end;
  }
  return concat(kept);
}

/** A copy of the first `fraction` of the bytes. */
export const truncated = (bytes: Uint8Array, fraction: number) =>
  new Uint8Array(bytes.subarray(0, Math.floor(bytes.byteLength * fraction)));

/** A copy with `count` bytes past the first `skip` set to pseudo-random values (seeded, reproducible). */
export function corrupted(bytes: Uint8Array, count: number, seed: number, skip = 64): Uint8Array {
  const out = new Uint8Array(bytes); // a copy (a Buffer's slice() would be a view)
  let state = seed >>> 0 || 1;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return state >>> 0;
  };
  for (let i = 0; i < count; i++) out[skip + (next() % (out.byteLength - skip))] = next() & 0xff;
  return out;
}
