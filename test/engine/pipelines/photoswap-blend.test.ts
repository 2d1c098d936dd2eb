/**
 * The local blend's host math (photoswap-blend.ts) on hand-made maps: torch's legacy nearest indices and
 * 3×3 max-pool, the per-sample normalization and float32 threshold, the union with the source's mask, the
 * replacement outside it, several subjects each normalized on its own, and blend layers of mixed sizes.
 * The blend against the official code itself is in test/engine/photoswap-parity.test.ts.
 */
import { describe, expect, it } from "vitest";
import {
  LocalBlend,
  maxPool3,
  nearestIndex,
  resizeNearest,
} from "../../../src/engine/pipelines/photoswap-blend.js";

const indices = (inSize: number, outSize: number) =>
  Array.from({ length: outSize }, (_, i) => nearestIndex(i, inSize, outSize));

describe("local blend", () => {
  it("resizes as torch's F.interpolate(mode='nearest') does: floor(dst · in/out) in float32", () => {
    // torch.nn.functional.interpolate(torch.arange(n).view(1,1,1,n).float(), size=(1,m)) for these n, m:
    expect(indices(3, 5)).toEqual([0, 0, 1, 1, 2]);
    expect(indices(5, 3)).toEqual([0, 1, 3]);
    expect(indices(6, 4)).toEqual([0, 1, 3, 4]);
    expect(indices(4, 6)).toEqual([0, 0, 1, 2, 2, 3]);
    expect(indices(16, 64)).toEqual(Array.from({ length: 64 }, (_, i) => i >> 2));
    expect(indices(8, 8)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const x = Float32Array.of(1, 2, 3, 4); // 2×2
    expect([...resizeNearest(x, { height: 2, width: 2 }, { height: 3, width: 4 })]).toEqual([
      1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4,
    ]);
  });

  it("max-pools each value over its 3×3 neighbourhood, the border padded out", () => {
    const x = Float32Array.of(1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0); // 3×4
    expect([...maxPool3(x, { height: 3, width: 4 })]).toEqual([1, 1, 0, 0, 5, 5, 0, 0, 5, 5, 0, 0]);
  });

  it("thresholds each normalized map, unites the target's mask with the source's, keeps the source outside", () => {
    // One target, one subject, 4×4 maps = latent: the source attends to the top-left, the target to the
    // bottom-right corner.
    const hw = 16;
    const map = new Float32Array(2 * hw);
    map[0] = 8; // source row, (0, 0)
    map[hw + 15] = 4; // target row, (3, 3)
    const blend = new LocalBlend({
      targets: 1,
      subjects: 1,
      groups: [{ size: { height: 4, width: 4 }, heads: 2 }],
      latent: { height: 4, width: 4 },
      threshold: 0.5,
    });
    blend.add([map]);
    blend.add([map]); // a running sum: doubling every map changes no normalized value
    const source = Float32Array.from({ length: 2 * hw }, (_, i) => i / 7);
    const target = Float32Array.from({ length: 2 * hw }, (_, i) => 1 - i / 3);
    const before = target.slice();
    const { masks, normalized } = blend.apply(source, [target]);
    const corner = (y0: number, x0: number) =>
      Array.from({ length: hw }, (_, i) =>
        Math.abs(Math.floor(i / 4) - y0) <= 1 && Math.abs((i % 4) - x0) <= 1 ? 1 : 0,
      );
    expect([...(masks[0] as Uint8Array)]).toEqual(corner(0, 0));
    expect([...(masks[1] as Uint8Array)]).toEqual(
      corner(0, 0).map((v, i) => v | (corner(3, 3)[i] as number)),
    );
    const targetMap = (normalized[1] as Float32Array[])[0] as Float32Array;
    expect(Math.max(...targetMap)).toBe(1);
    for (let i = 0; i < 2 * hw; i++) {
      const inside = (masks[1] as Uint8Array)[i % hw] === 1;
      const src = source[i] as number;
      // Inside: x_src + (x_t − x_src) in float32 (≈ x_t); outside: exactly the source.
      expect(target[i]).toBe(inside ? Math.fround(src + Math.fround((before[i] as number) - src)) : src);
    }
  });

  it("compares in float32: a value equal to fround(th) is not above the threshold", () => {
    const th = 0.3; // fround(0.3) = 0.30000001192…
    const map = Float32Array.of(1, Math.fround(th), 0, 0, 1, Math.fround(th) * (1 + 2 ** -22), 0, 0);
    const blend = new LocalBlend({
      targets: 1,
      subjects: 1,
      groups: [{ size: { height: 1, width: 4 }, heads: 1 }],
      latent: { height: 1, width: 4 },
      threshold: th,
    });
    blend.add([map]);
    // Max-pooling spreads the 1 over its neighbour; the last value only sees the 0 and the th value.
    const { normalized } = blend.masks();
    const sourceMap = (normalized[0] as Float32Array[])[0] as Float32Array;
    expect([...sourceMap]).toEqual([1, 1, Math.fround(th), 0]);
    expect([...(blend.masks().masks[0] as Uint8Array)]).toEqual([1, 1, 0, 0]);
  });

  it("gives each subject its own normalized mask: a faint subject is not drowned by a strong one", () => {
    // Two subjects on a 1×8 map: subject 0 strong at x=0, subject 1 a hundred times fainter at x=7.
    const w = 8;
    const map = new Float32Array(2 * w * 2); // [rows 2, Nq 8, S 2]
    map[(0 * w + 0) * 2 + 0] = 100;
    map[(0 * w + 7) * 2 + 1] = 1;
    const blend = new LocalBlend({
      targets: 1,
      subjects: 2,
      groups: [{ size: { height: 1, width: w }, heads: 1 }],
      latent: { height: 1, width: w },
      threshold: 0.5,
    });
    blend.add([map]);
    expect([...(blend.masks().masks[0] as Uint8Array)]).toEqual([1, 1, 0, 0, 0, 0, 1, 1]);
  });

  it("brings blend layers of different sizes to the largest before averaging over every head", () => {
    const small = Float32Array.of(4, 0, 0, 0, 0, 0, 0, 0); // [2 rows, 2×2, 1]: source row only
    const large = new Float32Array(2 * 16);
    large[15] = 4; // source row, (3, 3) of 4×4
    const blend = new LocalBlend({
      targets: 1,
      subjects: 1,
      groups: [
        { size: { height: 2, width: 2 }, heads: 1 },
        { size: { height: 4, width: 4 }, heads: 3 },
      ],
      latent: { height: 4, width: 4 },
      threshold: 0.9,
    });
    blend.add([small, large]);
    // The 2×2 map's top-left value covers the 4×4's top-left 2×2 block; both peaks are 4/4 = 1 after pooling.
    const { normalized } = blend.masks();
    const n = normalized[0]?.[0] as Float32Array;
    expect(n[0]).toBe(1);
    expect(n[15]).toBe(1);
    expect(n[10]).toBe(1); // pooled from (3, 3)
    expect(n[3]).toBe(0);
  });
});
