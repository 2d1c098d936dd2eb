/**
 * Wraps an op's ONNX emission so that chosen outputs pass through a transformation before the rest of
 * the graph reads them: the op writes each to a fresh name, then `through` writes the transformed value to
 * the output's own name. Test tools that change every op's results this way (float16 storage emulation,
 * test/helpers/half-emulation.ts; float32 rounding scatter, scripts/parity-float64.ts) share it.
 */
import type { Node, Tensor } from "../../src/engine/graph/graph.js";
import type { Emitter, OpDef } from "../../src/engine/graph/op.js";

export type OpEmit = NonNullable<OpDef["emit"]>;

/**
 * Emits `node` with `emit`, each of `outputs` written to a fresh name (`hint`), then calls `through` with
 * that name and the name the graph reads the output by, once per output.
 */
export function emitThrough(
  emit: OpEmit,
  e: Emitter,
  node: Node,
  outputs: readonly Tensor[],
  hint: string,
  through: (raw: string, out: string) => void,
): void {
  const raw = new Map(outputs.map((t) => [t, e.fresh(hint)]));
  const inner: Emitter = {
    device: e.device,
    convAsMatMul: e.convAsMatMul,
    name: (t: Tensor) => raw.get(t) ?? e.name(t),
    fresh: (h) => e.fresh(h),
    node: (...a) => e.node(...a),
    ints: (v) => e.ints(v),
    int64s: (v, h) => e.int64s(v, h),
    fill: (d, sh, v) => e.fill(d, sh, v),
  };
  emit(inner, node);
  for (const [t, name] of raw) through(name, e.name(t));
}
