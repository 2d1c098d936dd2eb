/**
 * Writes torch.save files for tests — the bytes torch 2.x writes for a state dict (pickle protocol 2,
 * stored zip entries 64-byte aligned, data descriptors, zip64 end records), as
 * test/fixtures/torch/make_torch_files.py documents; a test checks both give the same bytes. The
 * pieces (the state dict's pickle, the archive) are exported so tests can break either on purpose.
 */
import { writeFileSync } from "node:fs";
import { basename } from "node:path";
import { crc32 } from "node:zlib";
import { openSafetensors } from "../../src/engine/models/safetensors.js";

export interface TorchTestTensor {
  dtype: "F32" | "F16" | "BF16" | "F64" | "F8_E4M3" | "F8_E5M2" | "I64" | "I32" | "BOOL";
  shape: number[];
  data: Uint8Array;
  /** Overrides for broken files: the element offset, strides and storage size the pickle declares. */
  offset?: number;
  stride?: number[];
  storageNumel?: number;
}

const STORAGE: Record<TorchTestTensor["dtype"], [type: string, itemSize: number]> = {
  F32: ["FloatStorage", 4],
  F16: ["HalfStorage", 2],
  BF16: ["BFloat16Storage", 2],
  F64: ["DoubleStorage", 8],
  F8_E4M3: ["Float8_e4m3fnStorage", 1],
  F8_E5M2: ["Float8_e5m2Storage", 1],
  I64: ["LongStorage", 8],
  I32: ["IntStorage", 4],
  BOOL: ["BoolStorage", 1],
};

/** A state dict as torch.save writes it; `versions` is its `_metadata` (module prefix → version). */
export function writeTorchFile(
  path: string,
  tensors: Record<string, TorchTestTensor>,
  options: { prefix?: string; versions?: Record<string, number> } = {},
): void {
  const pickle = stateDictPickle(tensors, options.versions);
  const storages = Object.values(tensors).map((t, i): [string, Uint8Array] => [`data/${i}`, t.data]);
  writeFileSync(
    path,
    torchArchive(options.prefix ?? "archive", [["data.pkl", pickle], ...torchRecords(storages)]),
  );
}

/** A safetensors file's tensors re-saved as torch.save would (`model.bin` is archived under `model/`). */
export function writeTorchCopy(safetensorsFile: string, torchFile: string): void {
  const st = openSafetensors(safetensorsFile);
  const tensors: Record<string, TorchTestTensor> = {};
  for (const e of st.tensors.values()) {
    tensors[e.name] = {
      dtype: e.dtype as TorchTestTensor["dtype"],
      shape: [...e.shape],
      data: st.read(e.name),
    };
  }
  writeTorchFile(torchFile, tensors, { prefix: basename(torchFile).replace(/\.[^.]*$/, "") });
}

/** The records around data.pkl and the storages, in torch.save's order. */
export function torchRecords(storages: Array<[string, Uint8Array]>): Array<[string, Uint8Array]> {
  const text = (s: string) => new TextEncoder().encode(s);
  return [
    [".format_version", text("1")],
    [".storage_alignment", text("64")],
    ["byteorder", text("little")],
    ...storages,
    ["version", text("3\n")],
    [".data/serialization_id", text(`${"0".repeat(20)}${"1234567890".repeat(2)}`)],
  ];
}

/** CPython's protocol-2 pickle of an OrderedDict of tensors, memo and batching included. */
export function stateDictPickle(
  tensors: Record<string, TorchTestTensor>,
  versions?: Record<string, number>,
): Uint8Array {
  const p = new Pickler();
  p.op(0x80, 2);
  const orderedDict = () => {
    p.global("collections", "OrderedDict");
    p.op(0x29, 0x52);
    p.put();
  };
  orderedDict();
  const entries = Object.entries(tensors);
  p.setItems(
    entries.map(([name, t], i) => () => {
      p.str(name);
      tensor(p, t, String(i), orderedDict);
    }),
  );
  if (versions) {
    p.op(0x7d);
    p.put();
    p.str("_metadata");
    orderedDict();
    p.setItems(
      Object.entries(versions).map(([prefix, v]) => () => {
        p.str(prefix);
        p.op(0x7d);
        p.put();
        p.str("version");
        p.int(v);
        p.op(0x73);
      }),
    );
    p.op(0x73, 0x62);
  }
  p.op(0x2e);
  return p.bytes();
}

function tensor(p: Pickler, t: TorchTestTensor, key: string, orderedDict: () => void): void {
  const [type, itemSize] = STORAGE[t.dtype];
  const contiguous = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, b) => a * b, 1));
  p.global("torch._utils", "_rebuild_tensor_v2");
  p.op(0x28, 0x28);
  p.str("storage");
  p.global("torch", type);
  p.str(key);
  p.str("cpu");
  p.int(t.storageNumel ?? t.data.byteLength / itemSize);
  p.op(0x74);
  p.put();
  p.op(0x51);
  p.int(t.offset ?? 0);
  p.intTuple(t.shape);
  p.intTuple(t.stride ?? contiguous);
  p.op(0x89);
  orderedDict();
  p.op(0x74);
  p.put();
  p.op(0x52);
  p.put();
}

class Pickler {
  private readonly out: number[] = [];
  private readonly memo = new Map<string, number>();
  private next = 0;

  op(...codes: number[]): void {
    this.out.push(...codes);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
  put(): void {
    const i = this.next++;
    if (i < 256) this.op(0x71, i);
    else this.op(0x72, ...le(i, 4));
  }
  private memoized(key: string, write: () => void): void {
    const i = this.memo.get(key);
    if (i === undefined) {
      write();
      this.memo.set(key, this.next);
      this.put();
    } else if (i < 256) this.op(0x68, i);
    else this.op(0x6a, ...le(i, 4));
  }
  str(s: string): void {
    this.memoized(`s:${s}`, () => {
      const b = new TextEncoder().encode(s);
      this.op(0x58, ...le(b.length, 4), ...b);
    });
  }
  global(module: string, name: string): void {
    this.memoized(`g:${module}.${name}`, () =>
      this.op(0x63, ...new TextEncoder().encode(`${module}\n${name}\n`)),
    );
  }
  int(n: number): void {
    if (n >= 0 && n < 0x100) this.op(0x4b, n);
    else if (n >= 0 && n < 0x10000) this.op(0x4d, ...le(n, 2));
    else if (n >= -0x80000000 && n < 0x80000000) this.op(0x4a, ...le(n >>> 0, 4));
    else throw new Error(`test pickler: ${n} needs LONG1`);
  }
  intTuple(items: number[]): void {
    if (items.length === 0) {
      this.op(0x29);
      return;
    }
    if (items.length > 3) this.op(0x28);
    for (const n of items) this.int(n);
    this.op(items.length > 3 ? 0x74 : 0x84 + items.length);
    this.put();
  }
  /** CPython's _batch_setitems: batches of 1000, SETITEMS for several, SETITEM for one. */
  setItems(items: Array<() => void>): void {
    for (let i = 0; i < items.length; i += 1000) {
      const batch = items.slice(i, i + 1000);
      if (batch.length > 1) this.op(0x28);
      for (const write of batch) write();
      this.op(batch.length > 1 ? 0x75 : 0x73);
    }
  }
}

function le(n: number, bytes: number): number[] {
  return Array.from({ length: bytes }, (_, i) => Math.floor(n / 2 ** (8 * i)) & 0xff);
}

const U32 = 0xffffffff;

/**
 * A zip archive laid out as torch's PyTorchStreamWriter writes it through miniz. `method` overrides
 * the compression method a record's headers declare (the data stays stored), for broken files.
 * `zip64`: every entry written as miniz writes one whose size and offset reach 4 GiB (zip64 extra
 * fields in both headers, 32-bit fields 0xFFFFFFFF, a 64-bit data descriptor), without 4 GiB of data.
 */
export function torchArchive(
  prefix: string,
  records: Array<[string, Uint8Array]>,
  method: Record<string, number> = {},
  zip64 = false,
): Uint8Array {
  const out: Buffer[] = [];
  const central: Buffer[] = [];
  let at = 0;
  const push = (b: Buffer) => {
    out.push(b);
    at += b.length;
  };
  for (const [name, data] of records) {
    const full = Buffer.from(`${prefix}/${name}`);
    if (data.length >= U32 || at >= U32) throw new Error("test writer: zip64 entries not written here");
    const wide = (values: number[]) =>
      Buffer.from([1, 0, ...le(8 * values.length, 2), ...values.flatMap((v) => le(v, 8))]);
    const localZip64 = zip64 ? wide([data.length, 0, at]) : Buffer.alloc(0);
    const pad = (64 - ((at + 30 + full.length + 4 + localZip64.length) % 64)) % 64;
    const extra = Buffer.concat([
      localZip64,
      Buffer.from("FB"),
      Buffer.from(le(pad, 2)),
      Buffer.alloc(pad, "Z"),
    ]);
    const flags = (data.length ? 0x08 : 0) | 0x800;
    const m = method[name] ?? 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(m, 8);
    local.writeUInt16LE(0x5b81, 12);
    local.writeUInt16LE(full.length, 26);
    local.writeUInt16LE(extra.length, 28);
    const offset = at;
    push(Buffer.concat([local, full, extra, Buffer.from(data)]));
    const crc = crc32(data);
    if (data.length) {
      const dd = Buffer.alloc(zip64 ? 24 : 16);
      dd.writeUInt32LE(0x08074b50, 0);
      dd.writeUInt32LE(crc, 4);
      if (zip64) {
        dd.writeBigUInt64LE(BigInt(data.length), 8);
        dd.writeBigUInt64LE(BigInt(data.length), 16);
      } else {
        dd.writeUInt32LE(data.length, 8);
        dd.writeUInt32LE(data.length, 12);
      }
      push(dd);
    }
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(flags, 8);
    c.writeUInt16LE(m, 10);
    c.writeUInt16LE(0x5b81, 14);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(zip64 ? U32 : data.length, 20);
    c.writeUInt32LE(zip64 ? U32 : data.length, 24);
    c.writeUInt16LE(full.length, 28);
    c.writeUInt32LE(zip64 ? U32 : offset, 42);
    const centralZip64 = zip64 ? wide([data.length, data.length, offset]) : Buffer.alloc(0);
    c.writeUInt16LE(centralZip64.length, 30);
    central.push(c, full, centralZip64);
  }
  const cd = Buffer.concat(central);
  const cdOffset = at;
  push(cd);
  const z64 = Buffer.alloc(56);
  z64.writeUInt32LE(0x06064b50, 0);
  z64.writeBigUInt64LE(44n, 4);
  z64.writeUInt16LE(0x031e, 12);
  z64.writeUInt16LE(0x002d, 14);
  z64.writeBigUInt64LE(BigInt(records.length), 24);
  z64.writeBigUInt64LE(BigInt(records.length), 32);
  z64.writeBigUInt64LE(BigInt(cd.length), 40);
  z64.writeBigUInt64LE(BigInt(cdOffset), 48);
  const z64At = at;
  push(z64);
  const locator = Buffer.alloc(20);
  locator.writeUInt32LE(0x07064b50, 0);
  locator.writeBigUInt64LE(BigInt(z64At), 8);
  locator.writeUInt32LE(1, 16);
  push(locator);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(records.length, 8);
  end.writeUInt16LE(records.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(cdOffset, 16);
  push(end);
  return Buffer.concat(out);
}
