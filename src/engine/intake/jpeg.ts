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
  /** The frame's bits per sample: 8 in photos; 12, or 2–16 in lossless files, from medical and scientific cameras. */
  precision?: number;
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

/**
 * Walks the markers of `bytes` (which start with SOI). Entropy-coded data is skipped to its next marker.
 * `onSegment` sees each segment that has a length, by its marker and the offset of its 0xff.
 */
export function jpegStructure(
  bytes: Uint8Array,
  onSegment?: (marker: number, at: number) => void,
): JpegStructure {
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
    onSegment?.(marker, i);
    if (isFrame(marker) && out.frame === undefined) {
      out.frame = marker;
      out.precision = bytes[i + 4];
    }
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

/** Sequential (not progressive, lossless or hierarchical) frames: baseline, extended, arithmetic. */
const SEQUENTIAL = [0xc0, 0xc1, 0xc9];

/**
 * Whether `bytes` may be a whole JPEG that lacks only its end-of-image marker (some cameras and apps
 * leave it off): a sequential frame whose one scan covers every component, and no EOI. The markers
 * cannot tell whether that scan's data is whole; the decoder can, once EOI is appended: if data is
 * missing it warns of a premature end. Progressive and multi-scan files are left out, since one cut
 * between two scans is a valid picture with fewer scans (blurrier, or missing a colour).
 */
export function mayLackOnlyEoi(bytes: Uint8Array): boolean {
  // The component counts of the frame (SOF: precision, height, width, count) and of its scan (SOS).
  let [frameComponents, scanComponents] = [-1, -2];
  const { scans, complete, frame } = jpegStructure(bytes, (marker, at) => {
    if (isFrame(marker) && frameComponents === -1) frameComponents = bytes[at + 9] ?? -1;
    if (marker === SOS) scanComponents = bytes[at + 4] ?? -2;
  });
  if (complete || scans !== 1 || frame === undefined || !SEQUENTIAL.includes(frame)) return false;
  return frameComponents === scanComponents;
}
