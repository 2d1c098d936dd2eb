/**
 * ‖a − b‖ / ‖b‖ in float64: how far a result is from a reference. The engine's inversion reports its
 * corrections with it, and the parity checks (bench parity, the parity suites) measure every result by it.
 */
export function relativeDistance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relativeDistance: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = (a[i] as number) - (b[i] as number);
    num += d * d;
    den += (b[i] as number) ** 2;
  }
  return Math.sqrt(num / den);
}
