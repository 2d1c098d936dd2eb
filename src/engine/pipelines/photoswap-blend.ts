/**
 * Prompt-to-Prompt's local blend as the official Photoswap code runs it (../shared/PHOTOSWAP.md §6), on
 * the host over the maps the controlled UNet outputs (`swap.blend_map.<g>`: per conditional row and word
 * set, the post-swap cross-attention of the blend layers summed over heads, layers and the words'
 * tokens; one per layer size, brought to the largest by nearest resizing where sizes are mixed, which
 * only a UNet with one layer per block has). After each step from `from` on:
 *   running sum of the maps over steps 0…i → mean over heads·layers → 3×3 max-pool (stride 1, pad 1)
 *   → legacy nearest resize to the latent → ÷ each map's spatial max → `> threshold` in float32
 *   → union with the source's mask → outside it the target latent becomes the source latent.
 * Several word sets (subjects) each get their own mask, normalized by its own maximum, and the masks are
 * united: a small subject is not drowned by a large one. With one subject this is the official blend.
 */
import type { LatentSize } from "../index.js";

const f = Math.fround;

export interface LocalBlendOptions {
  /** Target rows K (the maps hold K+1 rows: the source, then the targets). */
  targets: number;
  /** Word sets (one per subject). */
  subjects: number;
  /** Per blend-layer size: the size, and how many (layer, head) maps its output sums. */
  groups: ReadonlyArray<{ size: LatentSize; heads: number }>;
  latent: LatentSize;
  /** A pixel is in a mask where its normalized map exceeds this (official: 0.3). */
  threshold: number;
}

/** What one blend did: for tests and reports. */
export interface BlendMasks {
  /** Per row (source, then each target): 1 where the latent is the target's own, [H·W]. Row 0 is the source's mask. */
  masks: Uint8Array[];
  /** Per row and subject: the normalized pooled map before the threshold, [H·W]. */
  normalized: Float32Array[][];
}

export class LocalBlend {
  /** Running sums, one per group: [K+1, Nq, S]. */
  private readonly sums: Float32Array[];
  private readonly thresholdF32: number;
  /** The largest group's size: where the maps are pooled. */
  private readonly map: LatentSize;
  private readonly heads: number;

  constructor(private readonly o: LocalBlendOptions) {
    if (o.groups.length === 0) throw new Error("local blend: no blend layers");
    this.sums = o.groups.map(
      (g) => new Float32Array((o.targets + 1) * g.size.height * g.size.width * o.subjects),
    );
    this.thresholdF32 = f(o.threshold);
    const tokens = (s: LatentSize) => s.height * s.width;
    this.map = o.groups.reduce(
      (a, g) => (tokens(g.size) > tokens(a) ? g.size : a),
      (o.groups[0] as { size: LatentSize }).size,
    );
    this.heads = o.groups.reduce((a, g) => a + g.heads, 0);
  }

  /** Adds one step's maps (`swap.blend_map.<g>` [K+1, Nq, S] each) to the running sums (every step). */
  add(step: readonly Float32Array[]): void {
    this.sums.forEach((sum, g) => {
      const x = step[g];
      if (x?.length !== sum.length)
        throw new Error(
          `local blend: a step's maps ${g} hold ${x?.length ?? 0} values, expected ${sum.length}`,
        );
      for (let i = 0; i < x.length; i++) sum[i] = f((sum[i] as number) + (x[i] as number));
    });
  }

  /** The masks of the maps summed so far. */
  masks(): BlendMasks {
    const { targets, subjects, latent } = this.o;
    const map = this.map;
    const nq = map.height * map.width;
    const hw = latent.height * latent.width;
    const normalized: Float32Array[][] = [];
    const own: Uint8Array[] = [];
    for (let r = 0; r <= targets; r++) {
      const mask = new Uint8Array(hw);
      const perSubject: Float32Array[] = [];
      for (let s = 0; s < subjects; s++) {
        const total = new Float32Array(nq);
        this.o.groups.forEach((g, gi) => {
          const n = g.size.height * g.size.width;
          const sum = this.sums[gi] as Float32Array;
          const own = Float32Array.from({ length: n }, (_, q) => sum[(r * n + q) * subjects + s] as number);
          const at = resizeNearest(own, g.size, map);
          for (let q = 0; q < nq; q++) total[q] = f((total[q] as number) + (at[q] as number));
        });
        const mean = total.map((v) => f(v / this.heads));
        const norm = normalize(resizeNearest(maxPool3(mean, map), map, latent));
        for (let i = 0; i < hw; i++) if ((norm[i] as number) > this.thresholdF32) mask[i] = 1;
        perSubject.push(norm);
      }
      normalized.push(perSubject);
      own.push(mask);
    }
    const source = own[0] as Uint8Array;
    const masks = own.map((m, r) => (r === 0 ? m : m.map((v, i) => v | (source[i] as number))));
    return { masks, normalized };
  }

  /**
   * x_t = x_src + mask·(x_t − x_src) for each target latent [C, H, W] (in place), as float32 does it;
   * returns the masks used.
   */
  apply(source: Float32Array, targetLatents: readonly Float32Array[]): BlendMasks {
    const result = this.masks();
    const hw = this.o.latent.height * this.o.latent.width;
    targetLatents.forEach((x, k) => {
      const mask = result.masks[k + 1] as Uint8Array;
      for (let i = 0; i < x.length; i++) {
        const src = source[i] as number;
        x[i] = f(src + f((mask[i % hw] as number) * f((x[i] as number) - src)));
      }
    });
    return result;
  }
}

/** max_pool2d(kernel 3, stride 1, padding 1): each value becomes the maximum of its 3×3 neighbourhood. */
export function maxPool3(x: Float32Array, size: LatentSize): Float32Array {
  const { height: h, width: w } = size;
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let xx = 0; xx < w; xx++) {
      let m = Number.NEGATIVE_INFINITY;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xs = xx + dx;
          if (xs >= 0 && xs < w) m = Math.max(m, x[yy * w + xs] as number);
        }
      }
      out[y * w + xx] = m;
    }
  }
  return out;
}

/** torch's legacy nearest index (F.interpolate(mode="nearest") with a size): floor(dst · in/out) in float32. */
export function nearestIndex(dst: number, inSize: number, outSize: number): number {
  if (inSize === outSize) return dst;
  if (outSize === 2 * inSize) return dst >> 1;
  const scale = f(inSize / outSize);
  return Math.min(Math.floor(f(dst * scale)), inSize - 1);
}

export function resizeNearest(x: Float32Array, from: LatentSize, to: LatentSize): Float32Array {
  const out = new Float32Array(to.height * to.width);
  for (let y = 0; y < to.height; y++) {
    const sy = nearestIndex(y, from.height, to.height);
    for (let xx = 0; xx < to.width; xx++)
      out[y * to.width + xx] = x[sy * from.width + nearestIndex(xx, from.width, to.width)] as number;
  }
  return out;
}

/** Divides by the maximum (in float32). */
function normalize(x: Float32Array): Float32Array {
  let max = Number.NEGATIVE_INFINITY;
  for (const v of x) max = Math.max(max, v);
  return x.map((v) => f(v / max));
}
