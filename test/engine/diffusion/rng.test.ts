import { describe, expect, it } from "vitest";
import { GaussianRng, philox4x32 } from "../../../src/engine/diffusion/rng.js";

describe("philox4x32", () => {
  it("matches the Random123 known-answer vectors for Philox4x32-10", () => {
    const hex = (a: Uint32Array) => Array.from(a, (v) => v.toString(16).padStart(8, "0"));
    expect(hex(philox4x32([0, 0, 0, 0], [0, 0]))).toEqual(["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]);
    const ones = 0xffffffff;
    expect(hex(philox4x32([ones, ones, ones, ones], [ones, ones]))).toEqual([
      "408f276d",
      "41c83b0e",
      "a20bc7c6",
      "6d5451fd",
    ]);
    expect(
      hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0])),
    ).toEqual(["d16cfe09", "94fdcceb", "5001e420", "24126ea1"]);
  });
});

describe("GaussianRng", () => {
  it("is a pure function of the seed, continuing the stream across calls", () => {
    const a = new GaussianRng(1234).normal(1001);
    expect(Array.from(new GaussianRng(1234n).normal(1001))).toEqual(Array.from(a));
    const split = new GaussianRng(1234);
    const parts = [split.normal(3), split.normal(0), split.normal(500), split.normal(498)];
    expect(parts.flatMap((p) => Array.from(p))).toEqual(Array.from(a));
    const other = new GaussianRng(1235).normal(1001);
    expect(other.filter((v, i) => v === a[i]).length).toBeLessThan(3);
    // Seeds above 2^32 use the key's high word.
    expect(new GaussianRng(2n ** 40n + 1234n).normal(4)).not.toEqual(new GaussianRng(1234).normal(4));
  });

  it("has standard normal moments and tail mass", () => {
    const n = 200_000;
    const z = new GaussianRng(42).normal(n);
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let s4 = 0;
    let within1 = 0;
    let beyond3 = 0;
    for (const v of z) {
      s1 += v;
      s2 += v * v;
      s3 += v ** 3;
      s4 += v ** 4;
      if (Math.abs(v) < 1) within1++;
      if (Math.abs(v) > 3) beyond3++;
    }
    // Bounds are ~4 standard errors of each estimator at n = 200k.
    expect(Math.abs(s1 / n)).toBeLessThan(0.01);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.013);
    expect(Math.abs(s3 / n)).toBeLessThan(0.025);
    expect(Math.abs(s4 / n - 3)).toBeLessThan(0.1);
    expect(Math.abs(within1 / n - 0.682689)).toBeLessThan(0.005);
    expect(Math.abs(beyond3 / n - 0.0026998)).toBeLessThan(0.0005);
    // Consecutive values are uncorrelated.
    let lag = 0;
    for (let i = 1; i < n; i++) lag += (z[i] as number) * (z[i - 1] as number);
    expect(Math.abs(lag / n)).toBeLessThan(0.01);
  });

  it("refuses seeds that are not 64-bit unsigned integers", () => {
    expect(() => new GaussianRng(-1)).toThrow(/seed must be an integer/);
    expect(() => new GaussianRng(1.5)).toThrow();
    expect(() => new GaussianRng(2n ** 64n)).toThrow(/seed must be an integer/);
  });
});
