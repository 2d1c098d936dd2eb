import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { bf16ToF32, f16ToF32, f32ToF16, fp8ToF32 } from "../../../src/engine/graph/dtype.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import { weightStore } from "../../../src/engine/models/weights.js";
import { fixtureDirs, loadGolden } from "../../helpers/golden.js";
import { modelFileErrorOf } from "../../helpers/model-files.js";
import { f32Bytes, writeSafetensors } from "../../helpers/write-safetensors.js";

const tmp = mkdtempSync(join(tmpdir(), "safetensors-test-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SD1_UNET = "test/fixtures/models/sd1/model/unet/diffusion_pytorch_model.safetensors";

function expectFileError(fn: () => unknown, file: string, pattern: RegExp): void {
  const error = modelFileErrorOf(fn);
  expect(error.file).toBe(file);
  expect(error.message).toMatch(pattern);
}

describe("half-precision conversion", () => {
  it("decodes fp16 bit patterns exactly, including subnormals, infinities and NaN", () => {
    const bits = new Uint16Array([
      0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x7e00, 0x3555,
    ]);
    const out = Array.from(f16ToF32(bits));
    expect(out.slice(0, 10)).toEqual([
      0,
      -0,
      1,
      -2,
      65504,
      2 ** -24,
      1023 * 2 ** -24,
      2 ** -14,
      Infinity,
      -Infinity,
    ]);
    expect(out[10]).toBeNaN();
    expect(out[11]).toBeCloseTo(0.33325195, 8);
  });

  it("encodes float32 to fp16 with round-to-nearest-even and round-trips every finite fp16 value", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const finite = all.filter((h) => (h & 0x7c00) !== 0x7c00);
    expect(Array.from(f32ToF16(f16ToF32(finite)))).toEqual(Array.from(finite));
    // 1 + 2^-11 lies halfway between 1 and the next fp16 (1 + 2^-10): ties go to the even mantissa (1).
    // 1 + 3·2^-11 lies halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): rounds up.
    const f = new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000, -1e-9, 2 ** -25 * 1.5]);
    expect(Array.from(f32ToF16(f))).toEqual([0x3c00, 0x3c02, 0x7c00, 0x8000, 0x0001]);
  });

  it("decodes bf16 as the top half of a float32", () => {
    expect(Array.from(bf16ToF32(new Uint16Array([0x3f80, 0xc040, 0x0000])))).toEqual([1, -3, 0]);
  });

  it("decodes every fp8 byte exactly: E4M3 as torch's float8_e4m3fn, E5M2 as float16's upper byte", () => {
    const all = Uint8Array.from({ length: 256 }, (_, b) => b);
    // E5M2 is IEEE half precision with its low 8 mantissa bits dropped.
    expect(Array.from(fp8ToF32(all, "E5M2"))).toEqual(
      Array.from(f16ToF32(Uint16Array.from(all, (b) => b << 8))),
    );
    // E4M3 (bias 7, 3 mantissa bits, no infinities): zero, one, two, 1.875, the largest (448), the
    // smallest subnormal (2^-9) and normal (2^-6), a negative, and S.1111.111 as NaN.
    const e4m3 = fp8ToF32(
      Uint8Array.from([0x00, 0x80, 0x38, 0x40, 0x3f, 0x7e, 0x01, 0x08, 0xfe, 0x7f, 0xff]),
      "E4M3",
    );
    expect(Array.from(e4m3.subarray(0, 9))).toEqual([0, -0, 1, 2, 1.875, 448, 2 ** -9, 2 ** -6, -448]);
    expect(Number.isNaN(e4m3[9]) && Number.isNaN(e4m3[10])).toBe(true);
    // The 127 positive finite values increase strictly: no code is decoded twice or out of order.
    const positive = Array.from(fp8ToF32(all.subarray(0, 127), "E4M3"));
    expect(positive.every((v, i) => i === 0 || v > (positive[i - 1] as number))).toBe(true);
  });
});

describe("openSafetensors on the fixtures", () => {
  it("reads every golden tensor with the shape golden.json declares", () => {
    for (const dir of fixtureDirs()) {
      const g = loadGolden(dir);
      for (const [name, shape] of Object.entries(g.json.tensors)) {
        expect(g.shape(name), `${dir} ${name}`).toEqual(shape);
        const e = g.tensors.tensors.get(name);
        const elements = shape.reduce((a, b) => a * b, 1);
        expect(g.tensors.read(name).byteLength).toBe(elements * (e?.dtype === "I64" ? 8 : 4));
      }
      expect(g.ints("unet.timestep")).toEqual([999, 421]);
    }
  });

  it("reads fp16 weights lazily by offset and converts them on request", () => {
    const st = openSafetensors(SD1_UNET);
    const e = st.tensors.get("conv_in.weight");
    expect(e).toMatchObject({ dtype: "F16", shape: [32, 4, 3, 3], length: 32 * 4 * 9 * 2 });
    // The bytes at the recorded offset are the tensor's: compare against a plain read of the file.
    const whole = readFileSync(SD1_UNET);
    const offset = e?.offset ?? -1;
    expect(Buffer.from(st.read("conv_in.weight")).equals(whole.subarray(offset, offset + 2304))).toBe(true);

    const store = weightStore(st);
    const raw = store.data("conv_in.weight");
    expect(raw.dtype).toBe("float16");
    const as32 = store.data("conv_in.weight", { dtype: "float32", shape: [32, 4, 3, 3] });
    expect(as32.dtype).toBe("float32");
    const f32 = new Float32Array(as32.bytes().slice().buffer);
    expect(Array.from(f32)).toEqual(Array.from(f16ToF32(new Uint16Array(raw.bytes().slice().buffer))));
    expect(f32.some((v) => v !== 0)).toBe(true);
    // fp16 → fp32 → fp16 is lossless.
    const back = store.data("conv_in.weight", { dtype: "float16" }).bytes();
    expect(Buffer.from(back).equals(Buffer.from(raw.bytes()))).toBe(true);
  });

  it("names the file and tensor when a tensor is missing or has the wrong shape", () => {
    const store = weightStore(openSafetensors(SD1_UNET));
    expectFileError(() => store.data("conv_in.weights"), SD1_UNET, /no tensor named "conv_in\.weights"/);
    expectFileError(
      () => store.data("conv_in.weight", { shape: [32, 4, 1, 1] }),
      SD1_UNET,
      /"conv_in\.weight" has shape \[32, 4, 3, 3\], expected \[32, 4, 1, 1\]/,
    );
  });
});

describe("openSafetensors on damaged files", () => {
  const good = join(tmp, "good.safetensors");
  writeSafetensors(good, {
    a: { dtype: "F32", shape: [2, 2], data: f32Bytes([1, 2, 3, 4]) },
    b: { dtype: "BF16", shape: [2], data: new Uint8Array(new Uint16Array([0x3f80, 0x4000]).buffer) },
    ids: { dtype: "I64", shape: [1], data: new Uint8Array(new BigInt64Array([7n]).buffer) },
  });

  it("reads a hand-written file, converting bf16 to float32 for the graph", () => {
    const store = weightStore(openSafetensors(good));
    expect(store.names().sort()).toEqual(["a", "b", "ids"]);
    expect(Array.from(store.float32("a", [2, 2]))).toEqual([1, 2, 3, 4]);
    const b = store.data("b");
    expect(b.dtype).toBe("float32");
    expect(Array.from(new Float32Array(b.bytes().slice().buffer))).toEqual([1, 2]);
    expect(store.data("ids").dtype).toBe("int64");
  });

  it("refuses an integer tensor where a float weight is expected", () => {
    expectFileError(
      () => weightStore(openSafetensors(good)).data("ids", { dtype: "float32" }),
      good,
      /"ids" has dtype I64, expected a floating-point/,
    );
  });

  it("reports a missing file", () => {
    const missing = join(tmp, "nope.safetensors");
    expectFileError(() => openSafetensors(missing), missing, /file not found/);
  });

  it("reports a truncated file, naming the tensor that runs past the end", () => {
    const cut = join(tmp, "cut.safetensors");
    copyFileSync(SD1_UNET, cut);
    truncateSync(cut, readFileSync(SD1_UNET).length - 100);
    expectFileError(() => openSafetensors(cut), cut, /tensor ".+" ends at byte \d+ .*\(truncated file\?\)/);
    const cutHeader = join(tmp, "cut-header.safetensors");
    copyFileSync(SD1_UNET, cutHeader);
    truncateSync(cutHeader, 200);
    expectFileError(() => openSafetensors(cutHeader), cutHeader, /header but holds only 192 bytes/);
    const tiny = join(tmp, "tiny.safetensors");
    writeFileSync(tiny, "abc");
    expectFileError(() => openSafetensors(tiny), tiny, /too short/);
  });

  it("reports a header whose offsets disagree with the shape, or that overlap, or bad JSON", () => {
    const mismatch = join(tmp, "mismatch.safetensors");
    writeSafetensors(mismatch, { a: { dtype: "F32", shape: [2, 2], data: f32Bytes([1, 2, 3, 4]) } }, (h) => {
      (h.a as { shape: number[] }).shape = [3, 2];
    });
    expectFileError(
      () => openSafetensors(mismatch),
      mismatch,
      /"a": data_offsets \[0, 16\] span 16 bytes but F32 shape \[3, 2\] needs 24/,
    );

    const overlap = join(tmp, "overlap.safetensors");
    writeSafetensors(
      overlap,
      {
        a: { dtype: "F32", shape: [2], data: f32Bytes([1, 2]) },
        b: { dtype: "F32", shape: [2], data: f32Bytes([3, 4]) },
      },
      (h) => {
        (h.b as { data_offsets: number[] }).data_offsets = [4, 12];
      },
    );
    expectFileError(() => openSafetensors(overlap), overlap, /"a" and "b" overlap/);

    const badDtype = join(tmp, "dtype.safetensors");
    writeSafetensors(badDtype, { a: { dtype: "Q4", shape: [1], data: new Uint8Array(1) } });
    expectFileError(() => openSafetensors(badDtype), badDtype, /"a" has unknown dtype "Q4"/);

    const garbage = join(tmp, "garbage.safetensors");
    const bytes = readFileSync(good);
    bytes[8] = 0x78; // the header no longer starts with "{"
    writeFileSync(garbage, bytes);
    expectFileError(() => openSafetensors(garbage), garbage, /header is not valid JSON/);
  });

  it("opens a sharded checkpoint through its index and checks that each shard holds its tensors", () => {
    const dir = mkdtempSync(join(tmp, "sharded-"));
    writeSafetensors(join(dir, "model-00001-of-00002.safetensors"), {
      a: { dtype: "F32", shape: [1], data: f32Bytes([1]) },
    });
    writeSafetensors(join(dir, "model-00002-of-00002.safetensors"), {
      b: { dtype: "F32", shape: [2], data: f32Bytes([2, 3]) },
    });
    const index = join(dir, "model.safetensors.index.json");
    const weightMap = { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" };
    writeFileSync(index, JSON.stringify({ metadata: { total_size: 12 }, weight_map: weightMap }));
    const st = openSafetensors(index);
    expect(st.files).toHaveLength(2);
    expect(Array.from(st.readFloat32("b"))).toEqual([2, 3]);

    writeFileSync(
      index,
      JSON.stringify({ weight_map: { ...weightMap, c: "model-00001-of-00002.safetensors" } }),
    );
    expectFileError(
      () => openSafetensors(index),
      join(dir, "model-00001-of-00002.safetensors"),
      /has no tensor "c"/,
    );
    writeFileSync(index, JSON.stringify({ weight_map: { a: "model-00003-of-00002.safetensors" } }));
    expectFileError(
      () => openSafetensors(index),
      join(dir, "model-00003-of-00002.safetensors"),
      /file not found/,
    );
    writeFileSync(index, "{ not json");
    expectFileError(() => openSafetensors(index), index, /not valid JSON/);
  });
});
