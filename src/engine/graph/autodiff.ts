/**
 * Reverse-mode autodiff over the graph IR. grad(loss, wrt) appends the backward pass to loss.graph:
 * only nodes on a path from some wrt tensor to the loss get backward nodes, and each input gradient is
 * built only where it is needed. Composite ops on such a path are differentiated through their
 * primitive expansion (which emission then uses for their forward too, so nothing is computed twice),
 * unless they bring their own VJP (attention, which recomputes its maps instead of keeping them): those
 * stay one node, emitted fused where the device can.
 */

import { isFloat } from "./dtype.js";
import { GraphError, type Node, type Tensor } from "./graph.js";
import { add, expand } from "./ops.js";
import { postOrder } from "./post-order.js";
import { expansion, isComposite, opDef } from "./registry.js";

function differentiableInput(node: Node, i: number): boolean {
  const def = opDef(node.op);
  return isFloat((node.inputs[i] as Tensor).dtype) && (def.differentiable?.(i, node) ?? true);
}

/** Gradients of the scalar `loss` with respect to each of `wrt` (zeros where the loss does not depend on it). */
export function grad(loss: Tensor, wrt: readonly Tensor[]): Tensor[] {
  const graph = loss.graph;
  if (loss.shape.some((d) => d !== 1)) throw new GraphError(`grad: the loss must be a scalar, got ${loss}`);
  if (!isFloat(loss.dtype)) throw new GraphError(`grad: the loss must be a float tensor, got ${loss}`);
  for (const w of wrt) {
    if (w.graph !== graph) throw new GraphError(`grad: ${w} belongs to another graph than the loss`);
    if (!isFloat(w.dtype)) {
      throw new GraphError(
        `grad: cannot differentiate with respect to ${w}: only float tensors have gradients`,
      );
    }
  }
  const targets = new Set(wrt);
  graph.hasGradients = true;

  // depends(t): does t depend differentiably on some wrt tensor? (memoized, iterative)
  const memo = new Map<Tensor, boolean>();
  const depends = (root: Tensor): boolean => {
    const stack = [root];
    while (stack.length) {
      const t = stack[stack.length - 1] as Tensor;
      if (memo.has(t)) {
        stack.pop();
        continue;
      }
      if (targets.has(t) || !t.node) {
        memo.set(t, targets.has(t));
        stack.pop();
        continue;
      }
      const node = t.node;
      const ins = node.inputs.filter((_, i) => differentiableInput(node, i));
      const pending = ins.filter((i) => !memo.has(i));
      if (pending.length) stack.push(...pending);
      else {
        memo.set(
          t,
          ins.some((i) => memo.get(i)),
        );
        stack.pop();
      }
    }
    return memo.get(root) as boolean;
  };

  // A composite output on the gradient path stands for its expansion's output (unless it has a VJP).
  const resolve = (t: Tensor): Tensor => {
    let cur = t;
    while (cur.node && isComposite(cur.node) && depends(cur)) {
      cur.node.differentiated = true;
      if (opDef(cur.node.op).vjp) break;
      cur = expansion(cur.node)[cur.index] as Tensor;
    }
    return cur;
  };

  const nodeDepends = (n: Node) => n.inputs.some((t, i) => differentiableInput(n, i) && depends(t));

  // Nodes between the wrt tensors and the loss, in topological order.
  const root = resolve(loss);
  const order = postOrder(root.node && nodeDepends(root.node) ? [root.node] : [], (n) =>
    n.inputs.flatMap((t, i) => {
      if (!differentiableInput(n, i) || !depends(t)) return [];
      const r = resolve(t);
      return r.node && nodeDepends(r.node) ? [r.node] : [];
    }),
  );

  const grads = new Map<Tensor, Tensor>();
  const accumulate = (t: Tensor, g: Tensor) => {
    const prev = grads.get(t);
    grads.set(t, prev ? add(prev, g) : g);
  };
  grads.set(root, graph.constant(1, loss.dtype, loss.shape));
  for (let k = order.length - 1; k >= 0; k--) {
    const node = order[k] as Node;
    const gy = node.outputs.map((o) => grads.get(o) ?? null);
    if (gy.every((g) => g === null)) continue;
    const needs = node.inputs.map((t, i) => differentiableInput(node, i) && depends(t));
    const vjp = opDef(node.op).vjp;
    if (!vjp) throw new GraphError(`grad: ${node.op} has no gradient rule`);
    const gx = vjp(node, gy, needs);
    node.inputs.forEach((t, i) => {
      const g = gx[i];
      if (needs[i] && g) accumulate(resolve(t), g);
    });
  }
  return wrt.map((w) => grads.get(resolve(w)) ?? expand(graph.constant(0, w.dtype), w.shape));
}
