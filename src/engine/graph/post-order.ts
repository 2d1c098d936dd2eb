/**
 * The nodes reachable from `roots` through `next`, each after every node it reaches: inputs before
 * their users. Iterative, because a UNet's backward pass is deeper than the call stack. `next` is
 * called once per node, when it is first expanded.
 */
export function postOrder<N>(roots: Iterable<N>, next: (n: N) => Iterable<N>): N[] {
  const order: N[] = [];
  const state = new Map<N, "open" | "done">();
  const stack = [...roots];
  while (stack.length) {
    const n = stack[stack.length - 1] as N;
    const s = state.get(n);
    if (s === "done") stack.pop();
    else if (s === "open") {
      state.set(n, "done");
      stack.pop();
      order.push(n);
    } else {
      state.set(n, "open");
      for (const m of next(n)) if (!state.has(m)) stack.push(m);
    }
  }
  return order;
}
