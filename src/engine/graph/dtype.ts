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
  } else if (dtype === "float16") (out as Uint16Array).set(float32ToFloat16(Float32Array.from(values)));
  else (out as Float32Array).set(values);
  return out;
}

/** The little-endian bytes of a host array (a view, no copy). */
export function bytesOf(a: TypedArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 → IEEE half bits, round to nearest even, overflow to ±Inf, subnormals kept. */
export function float32ToFloat16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    f32[0] = values[i] as number;
    const x = u32[0] as number;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const mant = x & 0x7fffff;
    let h: number;
    if (exp === 0xff) h = sign | 0x7c00 | (mant ? 0x200 : 0);
    else {
      const e = exp - 127 + 15;
      if (e >= 0x1f) h = sign | 0x7c00;
      else if (e <= 0) {
        if (e < -10) h = sign;
        else {
          // Subnormal half: shift the mantissa (with its implicit 1) right, rounding to nearest even.
          const m = mant | 0x800000;
          const shift = 14 - e;
          const half = 1 << (shift - 1);
          const rest = m & ((1 << shift) - 1);
          let v = m >>> shift;
          if (rest > half || (rest === half && v & 1)) v++;
          h = sign | v;
        }
      } else {
        let v = (e << 10) | (mant >>> 13);
        const rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest === 0x1000 && v & 1)) v++;
        h = sign | v;
      }
    }
    out[i] = h;
  }
  return out;
}

/** IEEE half bits → float32. */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i] as number;
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 31) out[i] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}
