/**
 * A session that counts on the add-on for its carried state while the add-on keeps none (it did not bind
 * the session): its first run says so, instead of every later "continue" silently starting again from the
 * values the first run was given. Simulated by a runtime that believes the add-on attached when it is not.
 */
import { describe, expect, it, vi } from "vitest";
import { Graph } from "../../../src/engine/graph/graph.js";
import { add } from "../../../src/engine/graph/ops.js";
import { createSession } from "../../../src/engine/runtime/index.js";

vi.mock("../../../src/engine/runtime/cuda-options.js", async (original) => ({
  ...(await original<typeof import("../../../src/engine/runtime/cuda-options.js")>()),
  addonAttached: () => true,
  bindsAllSessions: () => true,
}));

describe("carried state the add-on does not keep", () => {
  it("fails the session's first run with the add-on's reason", async () => {
    const g = new Graph("unkept");
    const x = g.input("x", "float32", [2]);
    g.output("carry.x", add(x, 1));
    g.output("y", add(x, 2));
    const session = await createSession(g, { device: "cpu" });
    try {
      await expect(
        session.run({ x: { dtype: "float32", shape: [2], data: new Float32Array(2) } }),
      ).rejects.toThrow(
        'graph "unkept": the CUDA add-on keeps no carried state of it: the CUDA options add-on is not attached: no carried state to read',
      );
    } finally {
      await session.release();
    }
  });
});
