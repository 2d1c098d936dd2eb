/** Element types of graph tensors and what they are in ONNX and in host memory. */

export type DType = "float32" | "float16" | "float64" | "int64" | "int32" | "bool";

export const DTYPES: readonly DType[] = ["float32", "float16", "float64", "int64", "int32", "bool"];

export type TypedArray = Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

/** TensorProto.DataType numbers (onnx.proto). */
export const ONNX_DTYPE: Record<DType, number> = {
  float32: 1,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
};

export const BYTES_PER_ELEMENT: Record<DType, number> = {
  float32: 4,
  float16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  bool: 1,
};

export function isFloat(dtype: DType): boolean {
  return dtype === "float32" || dtype === "float16" || dtype === "float64";
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** A host array of `n` elements of `dtype` (float16 as raw bits in a Uint16Array, bool as bytes). */
export function allocate(dtype: DType, n: number): TypedArray {
  switch (dtype) {
    case "float32":
      return new Float32Array(n);
    case "float64":
      return new Float64Array(n);
    case "float16":
      return new Uint16Array(n);
    case "int64":
      return new BigInt64Array(n);
    case "int32":
      return new Int32Array(n);
    case "bool":
      return new Uint8Array(n);
  }
}

/** Values (numbers, or bigints for int64) written into a fresh host array of `dtype`. */
export function fromNumbers(dtype: DType, values: readonly number[]): TypedArray {
  const out = allocate(dtype, values.length);
  if (out instanceof BigInt64Array) {
    for (let i = 0; i < values.length; i++) out[i] = BigInt(Math.trunc(values[i] as number));
  } else if (dtype === "float16") (out as Uint16Array).set(f32ToF16(Float32Array.from(values)));
  else (out as Float32Array).set(values);
  return out;
}

/** The little-endian bytes of a host array (a view, no copy). */
export function bytesOf(a: TypedArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

// Half-precision conversions between raw little-endian bit patterns and float32: checkpoints store
// fp16 and bf16, graphs compute in float32 or float16.

let f16Table: Float32Array | undefined;

/** Every fp16 bit pattern decoded once (256 KiB), so converting a 1.7 GB UNet is a table look-up per value. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * frac * 2 ** -24;
    else if (exp === 31) table[h] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else table[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  f16Table = table;
  return table;
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  const table = halfTable();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i] as number] as number;
  return out;
}

export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = (bits[i] as number) << 16;
  return new Float32Array(out.buffer);
}

/**
 * The 256 values of an 8-bit float with `exponentBits` exponent bits (bias 2^(e−1) − 1), the rest
 * mantissa: E4M3 as torch's float8_e4m3fn (no infinities; S.1111.111 is NaN, so its largest value is
 * 448), E5M2 as IEEE (float16's upper byte: infinities and NaNs at the top exponent).
 */
function fp8Table(exponentBits: 4 | 5): Float32Array {
  const mantissaBits = 7 - exponentBits;
  const bias = 2 ** (exponentBits - 1) - 1;
  const top = 2 ** exponentBits - 1;
  const table = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> mantissaBits) & top;
    const frac = b & ((1 << mantissaBits) - 1);
    const scale = 2 ** mantissaBits;
    if (exponentBits === 4 && exp === top && frac === (1 << mantissaBits) - 1) table[b] = Number.NaN;
    else if (exponentBits === 5 && exp === top)
      table[b] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else if (exp === 0) table[b] = sign * (frac / scale) * 2 ** (1 - bias);
    else table[b] = sign * (1 + frac / scale) * 2 ** (exp - bias);
  }
  return table;
}

const fp8Tables: Partial<Record<"E4M3" | "E5M2", Float32Array>> = {};

/** 8-bit floats (safetensors' F8_E4M3 / F8_E5M2, torch's float8_e4m3fn / float8_e5m2) → float32, exactly. */
export function fp8ToF32(bytes: Uint8Array, format: "E4M3" | "E5M2"): Float32Array {
  fp8Tables[format] ??= fp8Table(format === "E4M3" ? 4 : 5);
  const table = fp8Tables[format];
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = table[bytes[i] as number] as number;
  return out;
}

/** float32 → fp16 bits with round-to-nearest-even, overflow to ±Inf, subnormals kept (as numpy/torch do). */
export function f32ToF16(values: Float32Array): Uint16Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const x = u32[i] as number;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
    } else if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      // Subnormal half: shift the mantissa (with its implicit 1) right and round to nearest even.
      const m = mant | 0x800000;
      const shift = 14 - e;
      let half = m >>> shift;
      const rem = m & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      if (rem > mid || (rem === mid && half & 1)) half++;
      out[i] = sign | half;
    } else {
      let half = (e << 10) | (mant >>> 13);
      const rem = mant & 0x1fff;
      // Carrying into the exponent is intended: it rounds up to the next binade (or to Inf).
      if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
      out[i] = sign | half;
    }
  }
  return out;
}
