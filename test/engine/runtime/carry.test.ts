/**
 * Sessions with carried inputs (runtime/carry.ts): a graph output `carry.x` becomes input x of the next run.
 * Each case runs twice: the session keeping the value on the host (CPU, no add-on), and the add-on keeping
 * it in its bound buffers (on CUDA the device's; here host memory through bindAll, the same binding, tags
 * and copies: test/engine/runtime/bound-carry.test.ts checks the add-on's side alone).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Graph } from "../../../src/engine/graph/graph.js";
import { add, mul } from "../../../src/engine/graph/ops.js";
import {
  bindAllSessionsForTests,
  configureCudaProvider,
  cudaOptionsStatus,
} from "../../../src/engine/runtime/cuda-options.js";
import { createSession, type HostTensor, type Session } from "../../../src/engine/runtime/index.js";
import { addonBesideOnnxruntime } from "../../helpers/cuda-options-addon.js";

/** y = 2x and carry.x = x + s: each run adds s to the carried x. */
function counterGraph(): Graph {
  const g = new Graph("counter");
  const x = g.input("x", "float32", [4]);
  const s = g.input("s", "float32", [4]);
  g.output("y", mul(x, 2));
  g.output("carry.x", add(x, s));
  return g;
}

const vec = (v: number): HostTensor => ({ dtype: "float32", shape: [4], data: new Float32Array(4).fill(v) });
const values = (t: HostTensor | undefined) => [...((t as HostTensor).data as Float32Array)];
const first = (r: Record<string, HostTensor>, name: string) => values(r[name])[0];

const root = mkdtempSync(join(tmpdir(), "carry-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.each(["host", "add-on"] as const)("carried inputs kept by the %s", (keeper) => {
  beforeAll(async () => {
    if (keeper === "add-on")
      configureCudaProvider(await addonBesideOnnxruntime(join(root, "binding")), { prefer_nhwc: 1 });
  });
  const open = async (g: Graph): Promise<Session> => {
    if (keeper === "host") return createSession(g, { device: "cpu" });
    bindAllSessionsForTests(true);
    try {
      return await createSession(g, { device: "cpu" });
    } finally {
      bindAllSessionsForTests(false);
    }
  };

  it("feeds each run's carried output back as its input, until a reset", async () => {
    const runs = cudaOptionsStatus()?.boundRuns ?? 0;
    const session = await open(counterGraph());
    try {
      expect(session.carried.map((c) => c.name)).toEqual(["x"]);
      // The carried output is not among the results or the output names.
      expect(session.outputNames).toEqual(["y"]);
      const r1 = await session.run({ x: vec(1), s: vec(1) });
      expect(Object.keys(r1)).toEqual(["y"]);
      expect(first(r1, "y")).toBe(2);
      // "continue": x is what the last run computed (2, then 3); a fed x is not used.
      expect(first(await session.run({ x: vec(100), s: vec(1) }, { carry: "continue" }), "y")).toBe(4);
      expect(first(await session.run({ s: vec(1) }, { carry: "continue" }), "y")).toBe(6);
      expect(values((await session.readCarried()).x)).toEqual([4, 4, 4, 4]);
      // "reset" starts from the fed x again.
      expect(first(await session.run({ x: vec(10), s: vec(1) }, { carry: "reset" }), "y")).toBe(20);
      expect(first(await session.run({ s: vec(1) }, { carry: "continue" }), "y")).toBe(22);
      // Which keeper ran them: the add-on's bound runs, or onnxruntime's plain ones.
      expect((cudaOptionsStatus()?.boundRuns ?? 0) - runs).toBe(keeper === "add-on" ? 5 : 0);
    } finally {
      await session.release();
    }
  });

  it("refuses to continue or read before a run has set the carried inputs", async () => {
    const session = await open(counterGraph());
    try {
      await expect(session.run({ s: vec(1) }, { carry: "continue" })).rejects.toThrow(
        'graph "counter": a run continuing its carried inputs, but no run has set them in this session',
      );
      await expect(session.readCarried()).rejects.toThrow(
        keeper === "host" ? /no run has computed its carried inputs/ : /no bound session has run/,
      );
    } finally {
      await session.release();
    }
  });

  it("refuses a carried output without an input of its name, type and shape", async () => {
    const g = new Graph("bad");
    const x = g.input("x", "float32", [4]);
    g.output("carry.x", mul(g.input("y", "float32", [2, 4]), x));
    await expect(open(g)).rejects.toThrow(
      'graph "bad": output carry.x (float32[2,4]) carries no input of its name, type and shape',
    );
  });
});
