// A TIFF's first image file directory (IFD), read from the bytes with every offset bounds-checked: what
// intake asks of a TIFF before libvips sees it (is it a camera raw? does it end where it says?).

/** One IFD entry: its tag, its field type and count, and where its values are (inline or at an offset). */
export interface TiffEntry {
  readonly tag: number;
  readonly type: number;
  readonly count: number;
  /** Byte offset of the first value: inside the entry when the values fit in 4 bytes. */
  readonly valuesAt: number;
}

/** Bytes per value of the field types read here (SHORT, LONG); other types have no numeric reader. */
const TYPE_BYTES: Readonly<Record<number, number>> = { 3: 2, 4: 4 };

export interface TiffDirectory {
  /** The entries that lie inside the file, in file order (a directory cut short keeps those before the cut). */
  readonly entries: readonly TiffEntry[];
  /** Whether the directory lies whole inside the file. */
  readonly whole: boolean;
  /** The SHORT or LONG values of `entry`; undefined where they lie outside the file or are of another type. */
  values(entry: TiffEntry): number[] | undefined;
}

/** The first IFD of a TIFF (`II*\0` or `MM\0*`); a file too short for its header has none (not whole). */
export function firstDirectory(bytes: Uint8Array): TiffDirectory {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const little = bytes[0] === 0x49;
  const fits = (at: number, length: number) => at + length <= bytes.byteLength;
  const entries: TiffEntry[] = [];
  const ifd = fits(0, 8) ? view.getUint32(4, little) : bytes.byteLength;
  const count = fits(ifd, 2) ? view.getUint16(ifd, little) : 0;
  for (let i = 0; i < count && fits(ifd + 2 + 12 * i, 12); i++) {
    const at = ifd + 2 + 12 * i;
    const type = view.getUint16(at + 2, little);
    const n = view.getUint32(at + 4, little);
    const size = (TYPE_BYTES[type] ?? 1) * n;
    entries.push({
      tag: view.getUint16(at, little),
      type,
      count: n,
      valuesAt: size <= 4 ? at + 8 : view.getUint32(at + 8, little),
    });
  }
  return {
    entries,
    whole: fits(ifd, 2) && fits(ifd, 2 + 12 * count),
    values({ type, count: n, valuesAt }) {
      const size = TYPE_BYTES[type];
      if (size === undefined || !fits(valuesAt, n * size)) return undefined;
      return Array.from({ length: n }, (_, k) =>
        size === 2 ? view.getUint16(valuesAt + 2 * k, little) : view.getUint32(valuesAt + 4 * k, little),
      );
    },
  };
}
