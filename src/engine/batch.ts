/** One item's values as a batch of `n` (n copies back to back), as a batched graph input takes them. */
export function repeatBatch(x: Float32Array, n: number): Float32Array {
  const out = new Float32Array(x.length * n);
  for (let i = 0; i < n; i++) out.set(x, i * x.length);
  return out;
}
