// Transposition identities for non-square tests. Stable Diffusion's UNet and VAE have no positional
// encoding: convolutions, GroupNorm, per-token linears, nearest up-sampling and attention over all tokens.
// Swapping the height and width axes of an input therefore swaps them in the output exactly when every
// k×k convolution kernel is transposed too (conv(xᵀ, Kᵀ) = conv(x, K)ᵀ, with the symmetric padding of
// the UNet's convs and the VAE encoder's bottom/right padding both mapping onto themselves); GroupNorm's
// statistics do not depend on pixel order, attention is equivariant under a permutation of its tokens
// (transposing permutes them), and 1×1 kernels are their own transpose. In float32 the two sides agree
// up to summation order. `transposedCheckpoint` writes that transposed-kernel model.
import { cpSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { openSafetensors } from "../../src/engine/models/safetensors.js";
import { writeSafetensors } from "./write-safetensors.js";

/** [N, H, W] planes (any leading count N) → [N, W, H]. */
export function transposeHW(x: Float32Array, h: number, w: number): Float32Array {
  const plane = h * w;
  if (x.length % plane !== 0) throw new Error(`transposeHW: ${x.length} values are not planes of ${h}×${w}`);
  const out = new Float32Array(x.length);
  for (let p = 0; p < x.length; p += plane) {
    for (let y = 0; y < h; y++) for (let i = 0; i < w; i++) out[p + i * h + y] = x[p + y * w + i] as number;
  }
  return out;
}

/** Raw tensor bytes [..., kh, kw] of `size`-byte elements → [..., kw, kh]. */
function transposeKernelBytes(bytes: Uint8Array, shape: readonly number[], size: number): Uint8Array {
  const [kh, kw] = shape.slice(-2) as [number, number];
  const out = new Uint8Array(bytes.length);
  const plane = kh * kw * size;
  for (let p = 0; p < bytes.length; p += plane) {
    for (let y = 0; y < kh; y++) {
      for (let x = 0; x < kw; x++) {
        const from = p + (y * kw + x) * size;
        out.set(bytes.subarray(from, from + size), p + (x * kh + y) * size);
      }
    }
  }
  return out;
}

/**
 * A copy of the checkpoint folder `src` in `dir` whose UNet and VAE have every k×k (k > 1) convolution
 * kernel transposed; everything else, the text encoder included, is byte for byte the same.
 */
export function transposedCheckpoint(src: string, dir: string): string {
  cpSync(src, dir, { recursive: true });
  for (const component of ["unet", "vae"]) {
    const folder = join(dir, component);
    for (const file of readdirSync(folder).filter((f) => f.endsWith(".safetensors"))) {
      const st = openSafetensors(join(folder, file));
      const tensors: Parameters<typeof writeSafetensors>[1] = {};
      for (const [name, e] of st.tensors) {
        const bytes = st.read(name);
        const kernel = e.shape.length === 4 && ((e.shape[2] as number) > 1 || (e.shape[3] as number) > 1);
        tensors[name] = {
          dtype: e.dtype,
          shape: [...e.shape],
          data: kernel
            ? transposeKernelBytes(bytes, e.shape, e.length / e.shape.reduce((a, b) => a * b, 1))
            : bytes,
        };
      }
      writeSafetensors(join(folder, file), tensors);
    }
  }
  return dir;
}
