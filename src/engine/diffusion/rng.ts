/**
 * A seeded Gaussian generator that produces the same bits on every machine, so a seed shown to a user
 * reproduces their image anywhere (any OS, CPU or GPU provider: the noise is made on the host).
 *
 * Uniform bits come from Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11), a counter-based generator using only 32-bit integer multiplies and xors, which JavaScript
 * computes exactly. Normals come from Box–Muller in float64 on 53-bit uniforms, rounded to float32; V8's
 * Math.log/sqrt/cos/sin are its own software implementations, identical across platforms.
 */

const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;

/** The 64-bit product a·b of two uint32 as [high, low] uint32 halves, exact in float64 arithmetic. */
function mulHiLo(a: number, b: number): [number, number] {
  const aH = a >>> 16;
  const aL = a & 0xffff;
  const bH = b >>> 16;
  const bL = b & 0xffff;
  const ll = aL * bL;
  const lh = aL * bH;
  const hl = aH * bL;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  const hi = (aH * bH + Math.floor(lh / 65536) + Math.floor(hl / 65536) + Math.floor(mid / 65536)) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

/** Philox4x32 with 10 rounds: four uint32 of output for a 128-bit counter and a 64-bit key. */
export function philox4x32(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): Uint32Array {
  let [c0, c1, c2, c3] = counter;
  let [k0, k1] = key;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const [hi0, lo0] = mulHiLo(PHILOX_M0, c0);
    const [hi1, lo1] = mulHiLo(PHILOX_M1, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return Uint32Array.of(c0, c1, c2, c3);
}

const TWO_POW_32 = 2 ** 32;
const TWO_POW_53 = 2 ** 53;

export class GaussianRng {
  readonly seed: bigint;
  private readonly key: [number, number];
  /** Index of the next Philox block (each gives two normals). */
  private block = 0;
  private spare: number | undefined;

  /** `seed`: an integer from 0 to 2^64 − 1 (a number up to 2^53, or a bigint). */
  constructor(seed: number | bigint) {
    const s = BigInt(seed);
    if (s < 0n || s >= 1n << 64n || (typeof seed === "number" && !Number.isSafeInteger(seed))) {
      throw new RangeError(`seed must be an integer from 0 to 2^64 − 1, got ${seed}`);
    }
    this.seed = s;
    this.key = [Number(s & 0xffffffffn), Number(s >> 32n)];
  }

  /** The next `n` standard normal values of this seed's stream (consecutive calls continue the stream). */
  normal(n: number): Float32Array {
    const out = new Float32Array(n);
    let i = 0;
    if (this.spare !== undefined && n > 0) {
      out[i++] = this.spare;
      this.spare = undefined;
    }
    while (i < n) {
      const [z0, z1] = this.nextPair();
      out[i++] = z0;
      if (i < n) out[i++] = z1;
      else this.spare = z1;
    }
    return out;
  }

  private nextPair(): [number, number] {
    const b = this.block++;
    const bits = philox4x32([(b % TWO_POW_32) >>> 0, Math.floor(b / TWO_POW_32) >>> 0, 0, 0], this.key);
    // Two 53-bit uniforms in (0, 1): never 0, so the logarithm is finite.
    const u1 = (((bits[0] as number) >>> 5) * 67108864 + ((bits[1] as number) >>> 6) + 0.5) / TWO_POW_53;
    const u2 = (((bits[2] as number) >>> 5) * 67108864 + ((bits[3] as number) >>> 6) + 0.5) / TWO_POW_53;
    const r = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    return [Math.fround(r * Math.cos(theta)), Math.fround(r * Math.sin(theta))];
  }
}

/**
 * Uniform numbers in [0, 1) from mulberry32: a small seeded generator for what needs the same draws on
 * every machine but not Philox's statistical quality (LoRA's initial weights; the graph tests' data).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
