// A TIFF's first image file directory (IFD), read from the bytes with every offset bounds-checked: what
// intake asks of a TIFF before libvips sees it (is it a camera raw? does it end where it says?).

/** One IFD entry: its tag, its field type and count, and where its values are (inline or at an offset). */
export interface TiffEntry {
  readonly tag: number;
  readonly type: number;
  readonly count: number;
  /** Byte offset of the first value: inside the entry when the values fit in 4 bytes (8 in a BigTIFF). */
  readonly valuesAt: number;
}

/** Bytes per value of the field types read here (SHORT, LONG, BigTIFF's LONG8); other types have no numeric reader. */
const TYPE_BYTES: Readonly<Record<number, number>> = { 3: 2, 4: 4, 16: 8 };

export interface TiffDirectory {
  /** The entries that lie inside the file, in file order (a directory cut short keeps those before the cut). */
  readonly entries: readonly TiffEntry[];
  /** Whether the directory lies whole inside the file. */
  readonly whole: boolean;
  /** The SHORT, LONG or LONG8 values of `entry`; undefined where they lie outside the file or are of another type. */
  values(entry: TiffEntry): number[] | undefined;
}

/**
 * The first IFD of a TIFF (`II*\0`, `MM\0*`) or a BigTIFF (`II+\0`, `MM\0+`: 64-bit offsets and counts,
 * 20-byte entries holding up to 8 bytes of values); a file too short for its header has none (not whole).
 */
export function firstDirectory(bytes: Uint8Array): TiffDirectory {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const little = bytes[0] === 0x49;
  const fits = (at: number, length: number) => at + length <= bytes.byteLength;
  const read = (at: number, size: number) =>
    size === 2
      ? view.getUint16(at, little)
      : size === 4
        ? view.getUint32(at, little)
        : Number(view.getBigUint64(at, little));
  const big = fits(0, 4) && read(2, 2) === 43;
  // Sizes of an offset (and a count), of the directory's entry count, of an entry, of the header.
  const [offset, countSize, entrySize, headerSize] = big ? [8, 8, 20, 16] : [4, 2, 12, 8];
  const entries: TiffEntry[] = [];
  const ifd = fits(0, headerSize) ? read(headerSize - offset, offset) : bytes.byteLength;
  const count = fits(ifd, countSize) ? read(ifd, countSize) : 0;
  for (let i = 0; i < count && fits(ifd + countSize + entrySize * i, entrySize); i++) {
    const at = ifd + countSize + entrySize * i;
    const type = read(at + 2, 2);
    const n = read(at + 4, offset);
    const size = (TYPE_BYTES[type] ?? 1) * n;
    entries.push({
      tag: read(at, 2),
      type,
      count: n,
      valuesAt: size <= offset ? at + 4 + offset : read(at + 4 + offset, offset),
    });
  }
  return {
    entries,
    whole: fits(ifd, countSize) && fits(ifd, countSize + entrySize * count),
    values({ type, count: n, valuesAt }) {
      const size = TYPE_BYTES[type];
      if (size === undefined || !fits(valuesAt, n * size)) return undefined;
      return Array.from({ length: n }, (_, k) => read(valuesAt + size * k, size));
    },
  };
}
