// Raw checkpoint bytes as typed arrays. The half-precision conversions live with the graph's dtypes
// (src/engine/graph/dtype.ts), which everything above the graph builds on.

/** A typed-array view on raw little-endian bytes, copying only when the offset is misaligned. */
export function viewAs<T>(
  bytes: Uint8Array,
  ctor: { new (buffer: ArrayBufferLike, byteOffset: number, length: number): T; BYTES_PER_ELEMENT: number },
): T {
  const size = ctor.BYTES_PER_ELEMENT;
  if (bytes.byteLength % size !== 0)
    throw new RangeError(`${bytes.byteLength} bytes are not a multiple of ${size}`);
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  return new ctor(aligned.buffer, aligned.byteOffset, aligned.byteLength / size);
}
