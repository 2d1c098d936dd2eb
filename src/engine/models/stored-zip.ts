/**
 * The directory of a zip archive whose entries are STORED (not compressed), as torch.save writes them
 * (caffe2/serialize/inline_container.cc through miniz): each entry's data is located by its absolute
 * byte offset in the file, so a tensor is read by offset like a safetensors entry and a 3.4 GB UNet is
 * never read whole. Zip64 (archives or entries past 4 GiB; torch always writes the zip64 end records)
 * is read; compressed, encrypted and multi-disk archives are refused, each with one line.
 */
import { closeSync, fstatSync, readSync } from "node:fs";
import { ModelFileError } from "./errors.js";
import { openModelFile } from "./tensor-file.js";

export interface ZipEntry {
  readonly name: string;
  /** Absolute byte offset of the entry's data. */
  readonly offset: number;
  readonly size: number;
  readonly crc32: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const EOCD_SIZE = 22;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
/** The end record is followed by a comment of at most 65535 bytes. */
const MAX_TAIL = EOCD_SIZE + 0xffff;
/** A state dict has one entry per storage; a million is far beyond any checkpoint. */
const MAX_ENTRIES = 1_000_000;
const MAX_CENTRAL_BYTES = 256 * 1024 * 1024;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;

/** The archive's entries by name. `file` must be a zip archive (the caller checked the magic). */
export function readStoredZip(file: string): Map<string, ZipEntry> {
  const fd = openModelFile(file);
  try {
    const size = fstatSync(fd).size;
    const read = (offset: number, length: number, what: string): Buffer => {
      if (offset < 0 || offset + length > size) {
        throw new ModelFileError(file, `${what} lies past the end of the file (truncated file?)`);
      }
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, buf, done, length - done, offset + done);
        if (n === 0) throw new ModelFileError(file, `ended while reading ${what} (truncated file?)`);
        done += n;
      }
      return buf;
    };
    const end = findEnd(file, size, read);
    const central = read(end.offset, end.size, "the zip central directory");
    const entries = new Map<string, ZipEntry>();
    let at = 0;
    for (let i = 0; i < end.count; i++) {
      const entry = centralEntry(file, central, at, size, read);
      if (entries.has(entry.name)) throw new ModelFileError(file, `holds "${entry.name}" twice`);
      entries.set(entry.name, entry);
      at = entry.next;
    }
    return entries;
  } finally {
    closeSync(fd);
  }
}

type Read = (offset: number, length: number, what: string) => Buffer;

/** The central directory's offset, size and entry count, from the (zip64) end of central directory. */
function findEnd(file: string, size: number, read: Read): { offset: number; size: number; count: number } {
  const tailStart = Math.max(0, size - MAX_TAIL);
  const tail = read(tailStart, size - tailStart, "the end of the zip archive");
  let eocd = -1;
  for (let i = tail.length - EOCD_SIZE; i >= 0; i--) {
    if (tail.readUInt32LE(i) === EOCD_SIG) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    throw new ModelFileError(file, "has no zip end-of-central-directory record (truncated or damaged file?)");
  }
  if (tail.readUInt16LE(eocd + 4) !== 0 || tail.readUInt16LE(eocd + 6) !== 0) {
    throw new ModelFileError(file, "is a multi-disk zip archive, which torch never writes");
  }
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  const locator = tailStart + eocd - ZIP64_LOCATOR_SIZE;
  const hasLocator =
    locator >= 0 && read(locator, 4, "the zip64 locator").readUInt32LE(0) === ZIP64_LOCATOR_SIG;
  if (hasLocator) {
    const loc = read(locator, ZIP64_LOCATOR_SIZE, "the zip64 locator");
    const at = safeNumber(file, loc.readBigUInt64LE(8), "zip64 end record offset");
    const rec = read(at, ZIP64_EOCD_SIZE, "the zip64 end-of-central-directory record");
    if (rec.readUInt32LE(0) !== ZIP64_EOCD_SIG) {
      throw new ModelFileError(file, "has a zip64 locator pointing at no zip64 end record (damaged file?)");
    }
    count = safeNumber(file, rec.readBigUInt64LE(32), "zip64 entry count");
    cdSize = safeNumber(file, rec.readBigUInt64LE(40), "zip64 central directory size");
    cdOffset = safeNumber(file, rec.readBigUInt64LE(48), "zip64 central directory offset");
  } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
    throw new ModelFileError(file, "is a zip64 archive without its zip64 end records (damaged file?)");
  }
  if (count > MAX_ENTRIES || cdSize > MAX_CENTRAL_BYTES) {
    throw new ModelFileError(
      file,
      `declares ${count} zip entries in ${cdSize} bytes; not a torch.save archive`,
    );
  }
  if (cdOffset + cdSize > size) {
    throw new ModelFileError(
      file,
      "has its zip central directory past the end of the file (truncated file?)",
    );
  }
  return { offset: cdOffset, size: cdSize, count };
}

/** One central directory record, checked against its local header; `next` is the following record. */
function centralEntry(
  file: string,
  cd: Buffer,
  at: number,
  fileSize: number,
  read: Read,
): ZipEntry & { next: number } {
  if (at + CENTRAL_SIZE > cd.length || cd.readUInt32LE(at) !== CENTRAL_SIG) {
    throw new ModelFileError(file, "has a damaged zip central directory");
  }
  const flags = cd.readUInt16LE(at + 8);
  const method = cd.readUInt16LE(at + 10);
  const crc32 = cd.readUInt32LE(at + 16);
  let compressed: number = cd.readUInt32LE(at + 20);
  let size: number = cd.readUInt32LE(at + 24);
  const nameLen = cd.readUInt16LE(at + 28);
  const extraLen = cd.readUInt16LE(at + 30);
  const commentLen = cd.readUInt16LE(at + 32);
  let local: number = cd.readUInt32LE(at + 42);
  const next = at + CENTRAL_SIZE + nameLen + extraLen + commentLen;
  if (next > cd.length) throw new ModelFileError(file, "has a damaged zip central directory");
  const name = cd.toString("utf8", at + CENTRAL_SIZE, at + CENTRAL_SIZE + nameLen);
  // Zip64 extended information: the 8-byte values of the fields whose 4-byte slots hold 0xFFFFFFFF, in order.
  const extra = cd.subarray(at + CENTRAL_SIZE + nameLen, at + CENTRAL_SIZE + nameLen + extraLen);
  for (let e = 0; e + 4 <= extra.length; ) {
    const id = extra.readUInt16LE(e);
    const len = extra.readUInt16LE(e + 2);
    if (e + 4 + len > extra.length)
      throw new ModelFileError(file, `entry "${name}" has a damaged zip extra field`);
    if (id === 0x0001) {
      let p = e + 4;
      const take = (): number => {
        if (p + 8 > e + 4 + len)
          throw new ModelFileError(file, `entry "${name}" has a short zip64 extra field`);
        const v = safeNumber(file, extra.readBigUInt64LE(p), `zip64 field of "${name}"`);
        p += 8;
        return v;
      };
      if (size === U32_MAX) size = take();
      if (compressed === U32_MAX) compressed = take();
      if (local === U32_MAX) local = take();
    }
    e += 4 + len;
  }
  if (flags & 0x41) throw new ModelFileError(file, `entry "${name}" is encrypted`);
  if (method !== 0 || compressed !== size) {
    throw new ModelFileError(
      file,
      `entry "${name}" is compressed (zip method ${method}); torch.save stores entries uncompressed — re-save the file with torch.save, or convert it to safetensors`,
    );
  }
  const header = read(local, LOCAL_SIZE, `the zip header of "${name}"`);
  if (header.readUInt32LE(0) !== LOCAL_SIG) {
    throw new ModelFileError(file, `entry "${name}" points at no zip local header (damaged file?)`);
  }
  const localNameLen = header.readUInt16LE(26);
  const localName = read(local + LOCAL_SIZE, localNameLen, `the zip header of "${name}"`).toString("utf8");
  if (localName !== name) {
    throw new ModelFileError(
      file,
      `entry "${name}" points at the local header of "${localName}" (damaged file?)`,
    );
  }
  const offset = local + LOCAL_SIZE + localNameLen + header.readUInt16LE(28);
  if (offset + size > fileSize) {
    throw new ModelFileError(
      file,
      `entry "${name}" ends at byte ${offset + size} but the file has ${fileSize} bytes (truncated file?)`,
    );
  }
  return { name, offset, size, crc32, next };
}

function safeNumber(file: string, v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ModelFileError(file, `has an impossible ${what} (${v})`);
  return Number(v);
}
