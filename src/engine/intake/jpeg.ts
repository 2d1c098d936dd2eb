// A JPEG's structure from its markers, read without decoding anything: how many scans it has and
// whether it ends. A progressive JPEG sends its coefficients in scans, and the decoder passes over
// every 8×8 block of a component once per scan that covers it: a file of a few hundred KB with
// thousands of scans (legal: one scan per coefficient and bit plane) takes tens of seconds to decode
// within every pixel limit. Encoders write 1 scan (baseline) or 2–12 (libjpeg's default progressive
// script: 10, mozjpeg's: 5), so a limit far above that refuses such files before any decoding.

export interface JpegStructure {
  /** Start-of-scan segments (SOS) before the end of the image. */
  scans: number;
  /** The frame type (SOF marker, 0xc0–0xcf): 0xc2 is progressive Huffman coding. */
  frame?: number;
  /** Whether the end-of-image marker (EOI) was reached: a file cut short lacks it. */
  complete: boolean;
}

const SOI = 0xd8;
const EOI = 0xd9;
const SOS = 0xda;
/** Markers that stand alone: TEM and the restart markers RST0–7. */
const standalone = (m: number) => m === 0x01 || (m >= 0xd0 && m <= 0xd7);
/** Start-of-frame markers (0xc4 DHT, 0xc8 JPG and 0xcc DAC share the range but are not frames). */
const isFrame = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;

/** Walks the markers of `bytes` (which start with SOI). Entropy-coded data is skipped to its next marker. */
export function jpegStructure(bytes: Uint8Array): JpegStructure {
  const out: JpegStructure = { scans: 0, complete: false };
  if (bytes[0] !== 0xff || bytes[1] !== SOI) return out;
  let i = 2;
  while (i + 1 < bytes.byteLength) {
    if (bytes[i] !== 0xff) {
      i++; // stray bytes between segments: decoders skip them too (with a warning)
      continue;
    }
    const marker = bytes[i + 1] as number;
    if (marker === 0xff || standalone(marker)) {
      i += marker === 0xff ? 1 : 2; // fill byte, or a marker without a length
      continue;
    }
    if (marker === EOI) {
      out.complete = true;
      return out;
    }
    if (i + 3 >= bytes.byteLength) return out;
    const length = ((bytes[i + 2] as number) << 8) | (bytes[i + 3] as number);
    if (isFrame(marker) && out.frame === undefined) out.frame = marker;
    i += 2 + length;
    if (marker === SOS) {
      out.scans++;
      // Entropy-coded data runs to the next marker that is not a stuffed 0xff00 or a restart marker.
      while (i + 1 < bytes.byteLength) {
        if (bytes[i] === 0xff) {
          const next = bytes[i + 1] as number;
          if (next !== 0 && next !== 0xff && !(next >= 0xd0 && next <= 0xd7)) break;
        }
        i++;
      }
    }
  }
  return out;
}
