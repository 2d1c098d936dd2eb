/** Shared by the graph tests: seeded random data, host tensors, plain-loop reference ops, comparison. */
import { mulberry32 } from "../../../src/engine/diffusion/rng.js";
import type { DType } from "../../../src/engine/graph/index.js";
import type { HostTensor } from "../../../src/engine/runtime/index.js";

/** mulberry32: a small seeded PRNG, so failures reproduce. */
export { mulberry32 as rng };

export function randn(r: () => number, n: number): number[] {
  return Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()));
}

export function host(dtype: DType, shape: number[], values: readonly number[]): HostTensor {
  const data = dtype === "float64" ? Float64Array.from(values) : Float32Array.from(values);
  return { dtype, shape, data };
}

export function values(t: HostTensor | undefined): number[] {
  if (!t) throw new Error("missing output");
  return Array.from(t.data as Float32Array, Number);
}

/** max |a - b| / (max |b| + floor): a relative error that tolerates tiny reference values. */
export function relError(a: readonly number[], b: readonly number[], floor = 1e-6): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = floor;
  a.forEach((v, i) => {
    diff = Math.max(diff, Math.abs(v - (b[i] as number)));
    scale = Math.max(scale, Math.abs(b[i] as number));
  });
  return diff / scale;
}

export function refMatmul(a: number[], b: number[], m: number, k: number, n: number): number[] {
  const out = new Array<number>(m * n).fill(0);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++)
      for (let p = 0; p < k; p++)
        out[i * n + j] = (out[i * n + j] as number) + (a[i * k + p] as number) * (b[p * n + j] as number);
  return out;
}

export function refSoftmaxRows(x: number[], cols: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < x.length / cols; r++) {
    const row = x.slice(r * cols, (r + 1) * cols);
    const m = Math.max(...row);
    const e = row.map((v) => Math.exp(v - m));
    const s = e.reduce((p, v) => p + v, 0);
    out.push(...e.map((v) => v / s));
  }
  return out;
}

export interface ConvGeom {
  N: number;
  C: number;
  H: number;
  W: number;
  O: number;
  KH: number;
  KW: number;
  stride: [number, number];
  pads: [number, number, number, number];
  dilation: [number, number];
  groups: number;
}

export function convOutSize(g: ConvGeom): [number, number] {
  return [
    Math.floor((g.H + g.pads[0] + g.pads[2] - g.dilation[0] * (g.KH - 1) - 1) / g.stride[0]) + 1,
    Math.floor((g.W + g.pads[1] + g.pads[3] - g.dilation[1] * (g.KW - 1) - 1) / g.stride[1]) + 1,
  ];
}

/** Direct-loop conv2d (torch semantics), and its gradients for an output gradient `gy`, in float64. */
export function refConv(x: number[], w: number[], g: ConvGeom, gy?: number[]) {
  const [OH, OW] = convOutSize(g);
  const cg = g.C / g.groups;
  const og = g.O / g.groups;
  const y = new Array<number>(g.N * g.O * OH * OW).fill(0);
  const gx = new Array<number>(x.length).fill(0);
  const gw = new Array<number>(w.length).fill(0);
  for (let n = 0; n < g.N; n++)
    for (let o = 0; o < g.O; o++)
      for (let oh = 0; oh < OH; oh++)
        for (let ow = 0; ow < OW; ow++) {
          const yi = ((n * g.O + o) * OH + oh) * OW + ow;
          const grp = Math.floor(o / og);
          for (let c = 0; c < cg; c++)
            for (let kh = 0; kh < g.KH; kh++)
              for (let kw = 0; kw < g.KW; kw++) {
                const ih = oh * g.stride[0] - g.pads[0] + kh * g.dilation[0];
                const iw = ow * g.stride[1] - g.pads[1] + kw * g.dilation[1];
                if (ih < 0 || iw < 0 || ih >= g.H || iw >= g.W) continue;
                const xi = ((n * g.C + grp * cg + c) * g.H + ih) * g.W + iw;
                const wi = ((o * cg + c) * g.KH + kh) * g.KW + kw;
                y[yi] = (y[yi] as number) + (x[xi] as number) * (w[wi] as number);
                if (gy) {
                  gx[xi] = (gx[xi] as number) + (gy[yi] as number) * (w[wi] as number);
                  gw[wi] = (gw[wi] as number) + (gy[yi] as number) * (x[xi] as number);
                }
              }
        }
  return { y, gx, gw, shape: [g.N, g.O, OH, OW] };
}
