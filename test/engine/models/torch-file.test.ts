/**
 * torch.save files (`.bin`, `.pt`, `.ckpt`) read without running their pickles: the files
 * test/fixtures/torch/make_torch_files.py wrote in torch's exact layout, the sd1/sd2 fixtures converted
 * to `.bin` (identical tensors, bitwise the same UNet output), and one refusal per guard against a
 * hostile or damaged file.
 */

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { goldenUnetArgs } from "../../../src/cli/bench/golden.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { openWeightFile } from "../../../src/engine/models/checkpoint.js";
import { PICKLE_LIMITS } from "../../../src/engine/models/pickle-vm.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import { readStoredZip } from "../../../src/engine/models/stored-zip.js";
import { openTorchFile } from "../../../src/engine/models/torch-file.js";
import { loadGolden } from "../../helpers/golden.js";
import { modelFileErrorOf, scratchCopies } from "../../helpers/model-files.js";
import {
  stateDictPickle,
  type TorchTestTensor,
  torchArchive,
  torchRecords,
  writeTorchCopy,
  writeTorchFile,
} from "../../helpers/write-torch.js";

const FIXTURES = "test/fixtures/torch";
const copy = scratchCopies("torch-file-test-");
const scratch = copy(FIXTURES);

const f32 = (values: number[]) => new Uint8Array(new Float32Array(values).buffer);

describe("files in torch.save's layout", () => {
  it("reads every storage type, tied storages and a 0-d tensor, each by its offset in the archive", () => {
    const t = openTorchFile(join(FIXTURES, "tiny.bin"));
    expect([...t.tensors.keys()]).toEqual([
      "linear.weight",
      "linear.weight_tail",
      "norm.half",
      "norm.bf16",
      "steps",
      "scale",
      "mask",
    ]);
    expect(Array.from(t.readFloat32("linear.weight"))).toEqual(Array.from({ length: 12 }, (_, i) => i / 4));
    // Two tensors viewing one storage: the tail starts 4 elements in.
    const whole = t.tensors.get("linear.weight");
    const tail = t.tensors.get("linear.weight_tail");
    expect(tail).toMatchObject({ shape: [2, 4], length: 32, offset: (whole?.offset ?? 0) + 16 });
    expect(Array.from(t.readFloat32("linear.weight_tail"))).toEqual(
      Array.from({ length: 8 }, (_, i) => (i + 4) / 4),
    );
    // Storage records start 64-byte aligned, as torch's writer pads them.
    expect((whole?.offset ?? 1) % 64).toBe(0);
    expect(Array.from(t.readFloat32("norm.half"))).toEqual([1.5, -2, 65504, 2 ** -24]);
    expect(t.tensors.get("norm.bf16")).toMatchObject({ dtype: "BF16", shape: [2, 1] });
    expect(Array.from(t.readFloat32("norm.bf16"))).toEqual([1, -2]);
    expect(Array.from(new BigInt64Array(t.read("steps").slice().buffer))).toEqual([7n, -3n, 2n ** 40n]);
    expect(t.tensors.get("scale")).toMatchObject({ dtype: "F64", shape: [] });
    expect(Array.from(t.readFloat32("scale"))).toEqual([0.125]);
    expect(Array.from(t.read("mask"))).toEqual([1, 0, 1]);
  });

  it("reads protocol 4 pickles (frames, STACK_GLOBAL, MEMOIZE) and parameters saved as such", () => {
    const t = openTorchFile(join(FIXTURES, "protocol4.pt"));
    expect(t.tensors.get("w")).toMatchObject({ dtype: "F16", shape: [2, 2] });
    expect(Array.from(t.readFloat32("w"))).toEqual([1, 2, 3, 4]);
  });

  it("takes a training checkpoint's state_dict and leaves its training state's globals unbuilt", () => {
    const t = openTorchFile(join(FIXTURES, "lightning.ckpt"));
    expect([...t.tensors.keys()]).toEqual(["model.diffusion_model.out.2.bias"]);
    expect(Array.from(t.readFloat32("model.diffusion_model.out.2.bias"))).toEqual([0.5, -1]);
  });

  it("parses a file torch itself wrote (picklescan's new_pytorch_model.bin: one bare tensor, not a dict)", () => {
    const file = join(FIXTURES, "written-by-torch.bin");
    const records = readStoredZip(file);
    expect([...records.keys()]).toEqual(["archive/data.pkl", "archive/data/0", "archive/version"]);
    const data = records.get("archive/data/0");
    // The tensor's storage as Python's zipfile reads it: 12 float32 values.
    const bytes = readFileSync(file).subarray(data?.offset, (data?.offset ?? 0) + (data?.size ?? 0));
    expect(
      Array.from(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength))),
    ).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 122, 13, 14, 15]);
    // Its pickle is parsed to the end (a tensor rebuilt from a FloatStorage), then refused as no state dict.
    expect(modelFileErrorOf(() => openTorchFile(file)).message).toMatch(/does not hold a dict of tensors/);
  });

  it("follows zip64 extra fields, which torch writes for entries and offsets past 4 GiB", () => {
    const data = f32([1, 2, 3, 4]);
    const pickle = stateDictPickle({ w: { dtype: "F32", shape: [2, 2], data } });
    const file = join(copy(FIXTURES), "zip64.bin");
    writeFileSync(
      file,
      torchArchive("archive", [["data.pkl", pickle], ...torchRecords([["data/0", data]])], {}, true),
    );
    const t = openTorchFile(file);
    expect(t.tensors.get("w")?.offset ?? 1).toSatisfy((o: number) => o % 64 === 0);
    expect(Array.from(t.readFloat32("w"))).toEqual([1, 2, 3, 4]);
  });

  it("writes, in the test helper, the same bytes as the torch-layout script", () => {
    const file = join(scratch, "plain-ts.bin");
    writeTorchFile(
      file,
      {
        "conv.weight": { dtype: "F32", shape: [2, 1, 1, 2], data: f32([0, 0.125, 0.25, 0.375]) },
        "conv.bias": {
          dtype: "F16",
          shape: [2],
          data: new Uint8Array(new Uint16Array([0x3c00, 0xbc00]).buffer),
        },
      },
      { prefix: "plain", versions: { "": 1, conv: 1 } },
    );
    expect(Buffer.compare(readFileSync(file), readFileSync(join(FIXTURES, "plain.bin")))).toBe(0);
  });
});

/** The component folders' weights rewritten as the .bin files diffusers and transformers save. */
function toPickles(modelDir: string): void {
  for (const [component, from, to] of PICKLED) {
    writeTorchCopy(join(modelDir, component, from), join(modelDir, component, to));
    rmSync(join(modelDir, component, from));
  }
}

const PICKLED = [
  ["unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"],
  ["vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"],
  ["text_encoder", "model.safetensors", "pytorch_model.bin"],
] as const;

describe("checkpoints that ship only .bin weights", () => {
  const loaded: StableDiffusion[] = [];
  afterAll(async () => {
    for (const sd of loaded) await sd.release();
  });

  it.each(["sd1", "sd2"])("%s: every component's tensors are bitwise those of the safetensors", (name) => {
    const source = `test/fixtures/models/${name}/model`;
    const dir = copy(source);
    toPickles(dir);
    for (const [component, st, bin] of PICKLED) {
      const expected = openSafetensors(join(source, component, st));
      const actual = openWeightFile(join(dir, component, bin));
      expect([...actual.tensors.keys()]).toEqual([...expected.tensors.keys()]);
      for (const e of expected.tensors.values()) {
        expect(actual.tensors.get(e.name)).toMatchObject({
          dtype: e.dtype,
          shape: e.shape,
          length: e.length,
        });
        expect(Buffer.compare(actual.read(e.name), expected.read(e.name))).toBe(0);
      }
    }
  });

  it("runs the UNet to bitwise the same output as the safetensors checkpoint", async () => {
    const source = "test/fixtures/models/sd1/model";
    const dir = copy(source);
    toPickles(dir);
    const g = loadGolden("test/fixtures/models/sd1");
    const outputs: Float32Array[] = [];
    for (const model of [source, dir]) {
      const sd = await StableDiffusion.load(model, { device: "cpu", dtype: "fp32" });
      loaded.push(sd);
      outputs.push(await sd.predictNoise(...goldenUnetArgs(g)));
    }
    const [fromSafetensors, fromPickles] = outputs as [Float32Array, Float32Array];
    expect(fromPickles.length).toBe(fromSafetensors.length);
    expect(Buffer.compare(Buffer.from(fromPickles.buffer), Buffer.from(fromSafetensors.buffer))).toBe(0);
  });

  it("opens sharded .bin checkpoints (pytorch_model.bin.index.json) as one", () => {
    const dir = copy(FIXTURES);
    writeTorchFile(join(dir, "pytorch_model-00001-of-00002.bin"), {
      a: { dtype: "F32", shape: [2], data: f32([1, 2]) },
    });
    writeTorchFile(join(dir, "pytorch_model-00002-of-00002.bin"), {
      b: { dtype: "F32", shape: [1], data: f32([3]) },
    });
    const index = join(dir, "pytorch_model.bin.index.json");
    writeFileSync(
      index,
      JSON.stringify({
        metadata: { total_size: 12 },
        weight_map: { a: "pytorch_model-00001-of-00002.bin", b: "pytorch_model-00002-of-00002.bin" },
      }),
    );
    const t = openWeightFile(index);
    expect(t.files).toHaveLength(2);
    expect(Array.from(t.readFloat32("a"))).toEqual([1, 2]);
    expect(Array.from(t.readFloat32("b"))).toEqual([3]);
  });
});

// ---- hostile and damaged files ---------------------------------------------------------------

const OP = {
  PROTO2: [0x80, 2],
  EMPTY_DICT: [0x7d],
  MARK: [0x28],
  NONE: [0x4e],
  POP: [0x30],
  EMPTY_LIST: [0x5d],
  TUPLE1: [0x85],
  REDUCE: [0x52],
  SETITEM: [0x73],
  STOP: [0x2e],
};
const text = (s: string) => [...new TextEncoder().encode(s)];
const unicode = (s: string) => [
  0x58,
  ...new Uint8Array(new Uint32Array([text(s).length]).buffer),
  ...text(s),
];
const global = (module: string, name: string) => [0x63, ...text(`${module}\n${name}\n`)];

/** An archive holding `pickle` as data.pkl, with torch's other records. */
function withPickle(pickle: number[] | Uint8Array, storages: Array<[string, Uint8Array]> = []): string {
  const file = join(copy(FIXTURES), "hostile.bin");
  writeFileSync(
    file,
    torchArchive("archive", [["data.pkl", Uint8Array.from(pickle)], ...torchRecords(storages)]),
  );
  return file;
}

const refusal = (file: string) => modelFileErrorOf(() => openTorchFile(file)).message;

/** One float32 tensor `w` of `numel` elements, broken by `patch`. */
function oneTensor(patch: Partial<TorchTestTensor>, data = f32([1, 2, 3, 4])): string {
  const w: TorchTestTensor = { dtype: "F32", shape: [4], data, ...patch };
  return withPickle(stateDictPickle({ w }), [["data/0", data]]);
}

describe("refusals", () => {
  it("never calls a global it does not know: os.system or builtins.eval where a tensor or the dict should be", () => {
    const callInDict = (module: string, name: string) =>
      withPickle([
        ...OP.PROTO2,
        ...OP.EMPTY_DICT,
        ...unicode("w"),
        ...global(module, name),
        ...unicode("touch /tmp/pwned"),
        ...OP.TUPLE1,
        ...OP.REDUCE,
        ...OP.SETITEM,
        ...OP.STOP,
      ]);
    expect(refusal(callInDict("posix", "system"))).toMatch(
      /tensor "w" is a posix\.system object, which this reader does not build/,
    );
    const root = withPickle([
      ...OP.PROTO2,
      ...global("builtins", "eval"),
      ...unicode("1"),
      ...OP.TUPLE1,
      ...OP.REDUCE,
      ...OP.STOP,
    ]);
    expect(refusal(root)).toMatch(/holds a pickled builtins\.eval object, not a state dict/);
    // A stand-in fed to torch's own rebuilder is refused by name too.
    const intoTensor = withPickle([
      ...OP.PROTO2,
      ...OP.EMPTY_DICT,
      ...unicode("w"),
      ...global("torch._utils", "_rebuild_tensor_v2"),
      ...global("os", "system"),
      ...OP.TUPLE1,
      ...OP.REDUCE,
      ...OP.SETITEM,
      ...OP.STOP,
    ]);
    expect(refusal(intoTensor)).toMatch(/builds a tensor from os\.system/);
  });

  it("refuses storage types it does not read, naming them, and a data.pkl that fails its CRC", () => {
    const data = f32([1, 2, 3, 4]);
    const pickle = Buffer.from(stateDictPickle({ w: { dtype: "F32", shape: [4], data } }));
    const renamed = Buffer.from(pickle.toString("latin1").replace("FloatStorage", "ComplxStorage"), "latin1");
    expect(refusal(withPickle(renamed, [["data/0", data]]))).toMatch(
      /names torch\.ComplxStorage as a storage type/,
    );
    const file = oneTensor({});
    const bytes = readFileSync(file);
    bytes[bytes.indexOf("storage", 0, "latin1") + 3] = 0x62; // "storbge", inside data.pkl
    writeFileSync(file, bytes);
    expect(refusal(file)).toMatch(/data\.pkl fails its CRC-32 check/);
  });

  it("refuses a tensor that reaches outside its storage, and a storage record of the wrong length", () => {
    expect(refusal(oneTensor({ offset: 1 }))).toMatch(/spans elements 1…5 of a 4-element storage/);
    expect(refusal(oneTensor({ shape: [5], stride: [1] }))).toMatch(
      /spans elements 0…5 of a 4-element storage/,
    );
    expect(refusal(oneTensor({ storageNumel: 8 }))).toMatch(
      /storage record data\/0 holds 16 bytes, but 8 F32 elements need 32/,
    );
  });

  it("refuses non-contiguous tensors, saying how to save them", () => {
    expect(refusal(oneTensor({ shape: [2, 2], stride: [1, 2] }))).toMatch(
      /is not contiguous.*\.contiguous\(\) or as safetensors/,
    );
    // A dimension of size 1 may carry any stride, as torch itself allows.
    const t = openTorchFile(oneTensor({ shape: [4, 1], stride: [1, 7] }));
    expect(Array.from(t.readFloat32("w"))).toEqual([1, 2, 3, 4]);
  });

  it("refuses truncated archives, compressed entries and the legacy format, each in one line", () => {
    const whole = readFileSync(join(FIXTURES, "tiny.bin"));
    const cut = join(copy(FIXTURES), "cut.bin");
    writeFileSync(cut, whole.subarray(0, whole.length - 200));
    expect(refusal(cut)).toMatch(/truncated or damaged file/);
    writeFileSync(cut, whole.subarray(0, 1500));
    expect(refusal(cut)).toMatch(/truncated or damaged file/);

    const compressed = join(copy(FIXTURES), "deflated.bin");
    const pickle = stateDictPickle({ w: { dtype: "F32", shape: [1], data: f32([1]) } });
    writeFileSync(
      compressed,
      torchArchive("archive", [["data.pkl", pickle], ...torchRecords([["data/0", f32([1])]])], {
        "data.pkl": 8,
      }),
    );
    expect(refusal(compressed)).toMatch(/entry "archive\/data\.pkl" is compressed \(zip method 8\)/);

    const legacy = join(copy(FIXTURES), "legacy.pt");
    writeFileSync(
      legacy,
      Uint8Array.from([
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
      ]),
    );
    expect(refusal(legacy)).toMatch(
      /legacy \(pre-1\.6\) serialization format.*re-save it with torch ≥ 1\.6 or convert it to safetensors/,
    );
  });

  it("refuses big-endian files and TorchScript archives", () => {
    const pickle = stateDictPickle({ w: { dtype: "F32", shape: [1], data: f32([1]) } });
    const records = torchRecords([["data/0", f32([1])]]).map(([n, d]): [string, Uint8Array] => [
      n,
      n === "byteorder" ? new TextEncoder().encode("big") : d,
    ]);
    const big = join(copy(FIXTURES), "big.bin");
    writeFileSync(big, torchArchive("archive", [["data.pkl", pickle], ...records]));
    expect(refusal(big)).toMatch(/was written big-endian; only little-endian torch files are read/);
    const script = join(copy(FIXTURES), "script.pt");
    writeFileSync(
      script,
      torchArchive("model", [["data.pkl", pickle], ["constants.pkl", pickle], ...records]),
    );
    expect(refusal(script)).toMatch(/is a TorchScript archive/);
  });

  it("bounds the pickle machine: nesting, stack, memo and object counts, unknown opcodes", () => {
    expect(refusal(withPickle([...OP.PROTO2, ...Array(PICKLE_LIMITS.marks + 1).fill(0x28)]))).toMatch(
      /nests more than 10000 MARKs/,
    );
    expect(refusal(withPickle([...OP.PROTO2, ...new Array(PICKLE_LIMITS.stack + 1).fill(0x4e)]))).toMatch(
      /pushes more than 1000000 values/,
    );
    const memo = new Uint8Array(3 + 5 * (PICKLE_LIMITS.memo + 1));
    memo.set([0x80, 2, 0x4e]);
    for (let i = 0; i <= PICKLE_LIMITS.memo; i++) {
      memo.set([0x72, i & 0xff, (i >> 8) & 0xff, (i >> 16) & 0xff, 0], 3 + 5 * i);
    }
    expect(refusal(withPickle(memo))).toMatch(/memoizes more than 1000000 values/);
    const objects = new Uint8Array(2 + 2 * (PICKLE_LIMITS.objects + 1));
    objects.set([0x80, 2]);
    for (let i = 0; i <= PICKLE_LIMITS.objects; i++) objects.set([0x5d, 0x30], 2 + 2 * i);
    expect(refusal(withPickle(objects))).toMatch(/builds more than 10000000 objects/);
    // INST (protocol 0) imports and calls in one opcode; a state dict never uses it.
    expect(refusal(withPickle([...OP.PROTO2, 0x69, ...text("os\nsystem\n"), ...OP.STOP]))).toMatch(
      /opcode 0x69.*refused/,
    );
  });
});
