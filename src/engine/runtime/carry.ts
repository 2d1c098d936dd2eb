/**
 * Carried inputs: a graph output named `carry.<input>` is that input's value for the graph's next run —
 * a training graph's trained tensors and optimizer state, updated in the graph step after step. Where the
 * CUDA add-on runs the session (native/bound-runs.c), the value stays on the device from one run to the
 * next; elsewhere the session keeps it on the host and feeds it back. Either way a caller runs the first
 * step with `carry: "reset"` and the carried inputs in its feeds, later steps with "continue" and without
 * them, and reads the values back with `readCarried`.
 */
import type { ValueSpec } from "../graph/emit.js";

export const CARRY_PREFIX = "carry.";

/** How a run treats the carried inputs: from its feeds, or what the previous run computed. */
export type CarryMode = "reset" | "continue";

export const isCarryOutput = (name: string): boolean => name.startsWith(CARRY_PREFIX);

/** The carried inputs of a graph with these inputs and outputs, each with its output; an error names an
 *  output without its input. */
export function carriedInputs(
  graph: string,
  inputs: readonly ValueSpec[],
  outputs: readonly ValueSpec[],
): { input: ValueSpec; output: ValueSpec }[] {
  const byName = new Map(inputs.map((v) => [v.name, v]));
  return outputs
    .filter((o) => isCarryOutput(o.name))
    .map((output) => {
      const input = byName.get(output.name.slice(CARRY_PREFIX.length));
      if (!input || input.dtype !== output.dtype || input.shape.join() !== output.shape.join())
        throw new Error(
          `graph "${graph}": output ${output.name} (${output.dtype}[${output.shape}]) carries no input of its name, type and shape`,
        );
      return { input, output };
    });
}
