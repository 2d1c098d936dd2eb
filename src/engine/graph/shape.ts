/** Shape arithmetic shared by the op table: broadcasting, axes, and the error messages they raise. */
import { GraphError, type Tensor } from "./graph.js";

export function describe(inputs: readonly Tensor[]): string {
  return inputs.map(String).join(", ");
}

/** A build-time error that names the op, its inputs' shapes and the cause. */
export function opError(op: string, inputs: readonly Tensor[], cause: string): GraphError {
  return new GraphError(`${op}(${describe(inputs)}): ${cause}`);
}

/** numpy broadcasting of several shapes, or null when they do not broadcast. */
export function broadcastShapes(shapes: readonly (readonly number[])[]): number[] | null {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const k = s.length - rank + i;
      const v = k >= 0 ? (s[k] as number) : 1;
      if (v === 1) continue;
      if (d !== 1 && d !== v) return null;
      d = v;
    }
    out.push(d);
  }
  return out;
}

/** Axes normalized to [0, rank), checked for range and duplicates. */
export function normalizeAxes(
  op: string,
  inputs: readonly Tensor[],
  axes: readonly number[],
  rank: number,
): number[] {
  const out = axes.map((a) => {
    if (!Number.isInteger(a) || a < -rank || a >= rank) {
      throw opError(op, inputs, `axis ${a} is out of range for rank ${rank}`);
    }
    return a < 0 ? a + rank : a;
  });
  if (new Set(out).size !== out.length) throw opError(op, inputs, `axes [${axes.join(",")}] repeat an axis`);
  return out;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function fmt(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}
