/** Op lookup over both tables, and the on-demand expansion of composites into primitives. */
import { COMPOSITES } from "./composites.js";
import { GraphError, type Node, type Tensor } from "./graph.js";
import type { Device, OpDef } from "./op.js";
import { PRIMITIVES } from "./primitives.js";

export function opDef(op: string): OpDef {
  const def = PRIMITIVES[op] ?? COMPOSITES[op];
  if (!def) throw new GraphError(`unknown op ${op}`);
  return def;
}

export function isComposite(node: Node): boolean {
  return node.op in COMPOSITES;
}

/** The composite's primitive form, built once and shared by autodiff and emission. */
export function expansion(node: Node): Tensor[] {
  if (!node.expansion) node.expansion = (opDef(node.op).decompose as (n: Node) => Tensor[])(node);
  return node.expansion;
}

/** Whether composites may run fused: all, none, or per composite op. */
export type Fuse = boolean | ((op: string) => boolean);

/** The tensor that emission computes for `t`: a composite whose fused kernel the device lacks at this
 *  dtype, that `fuse` excludes, or that is differentiated through its expansion (no VJP of its own), is
 *  emitted as its expansion. */
export function emittedAs(t: Tensor, device: Device, fuse: Fuse = true): Tensor {
  let cur = t;
  for (;;) {
    const node = cur.node;
    if (!node || !isComposite(node)) return cur;
    const def = opDef(node.op);
    const fused = typeof fuse === "function" ? fuse(node.op) : fuse;
    if (fused && (!node.differentiated || def.vjp) && def.fusable?.(node, device)) return cur;
    cur = expansion(node)[cur.index] as Tensor;
  }
}
