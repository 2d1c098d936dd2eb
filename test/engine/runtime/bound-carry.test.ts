/**
 * Carried state in bound runs (native/bound-runs.c): after every run a session's output carry.X goes into its
 * input X's buffer, and a run tagged carry:<id>:continue keeps it there instead of the host's feed for X. On
 * the CPU provider through bindAll (host memory, memcpy where CUDA copies on the device): the same binding,
 * pairing, tags and checks as on the GPU.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { emitGraph, serializeInline } from "../../../src/engine/graph/emit.js";
import { Graph } from "../../../src/engine/graph/graph.js";
import { add, cast, mul } from "../../../src/engine/graph/ops.js";
import {
  bindAllSessionsForTests,
  configureCudaProvider,
  readCarried,
} from "../../../src/engine/runtime/cuda-options.js";
import { ort } from "../../../src/engine/runtime/ort.js";
import { addonBesideOnnxruntime } from "../../helpers/cuda-options-addon.js";

const root = mkdtempSync(join(tmpdir(), "bound-carry-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  // Any options attach the add-on, which installs the bound-run hooks.
  expect(
    configureCudaProvider(await addonBesideOnnxruntime(join(root, "binding")), { prefer_nhwc: 1 }),
  ).toMatchObject({ ok: true });
});

/** y = 2x and carry.x = x + s: x steps by s from run to run. `shapeS`/`carryType` break the pair on purpose. */
const model = (opts: { shapeS?: number[]; carryType?: "float16" } = {}) => {
  const g = new Graph("carry");
  const x = g.input("x", "float32", [4]);
  const s = g.input("s", "float32", opts.shapeS ?? [4]);
  g.output("y", mul(x, g.constant(2)));
  const next = add(x, s);
  g.output("carry.x", opts.carryType ? cast(next, opts.carryType) : next);
  return serializeInline(emitGraph(g));
};

/** A session of `model` bound in host memory (bindAll only while it is created). */
const boundSession = async (bytes: Uint8Array = model()) => {
  bindAllSessionsForTests(true);
  try {
    return await ort.InferenceSession.create(bytes);
  } finally {
    bindAllSessionsForTests(false);
  }
};

const fill = (v: number, n = 4) => new ort.Tensor("float32", new Float32Array(n).fill(v), [n]);

/** One run with x fed as `x` (s = 1), tagged `tag`; the values of what it fetched. */
const step = async (session: ort.InferenceSession, x: number, tag?: string, fetches = ["y", "carry.x"]) => {
  const r = await session.run({ x: fill(x), s: fill(1) }, fetches, tag === undefined ? {} : { tag });
  return Object.fromEntries(Object.entries(r).map(([k, t]) => [k, [...(t.data as Float32Array)]]));
};

const carriedX = (id: string) => {
  const state = readCarried(id);
  expect(Object.keys(state)).toEqual(["x"]);
  return [...new Float32Array(state.x as ArrayBuffer)];
};

describe("carried state (carry.X into X) in bound runs, on the CPU provider", () => {
  it("continues from the last run's carry.x, ignoring the host's x, until a reset or an untagged run", async () => {
    const session = await boundSession();
    expect(await step(session, 1, "carry:a:reset")).toEqual({ y: [2, 2, 2, 2], "carry.x": [2, 2, 2, 2] });
    // The host feeds x = 100 each time: a continue must not copy it in.
    expect((await step(session, 100, "carry:a:continue")).y).toEqual([4, 4, 4, 4]);
    expect((await step(session, 100, "carry:a:continue")).y).toEqual([6, 6, 6, 6]);
    expect(carriedX("a")).toEqual([4, 4, 4, 4]);
    expect((await step(session, 10, "carry:a:reset")).y).toEqual([20, 20, 20, 20]);
    expect((await step(session, 100, "carry:a:continue")).y).toEqual([22, 22, 22, 22]);
    expect(carriedX("a")).toEqual([12, 12, 12, 12]);
    // No tag, or another tag: every input from the host, and the state moves on from there.
    expect((await step(session, 5)).y).toEqual([10, 10, 10, 10]);
    expect((await step(session, 7, "warmup")).y).toEqual([14, 14, 14, 14]);
    expect((await step(session, 100, "carry:a:continue")).y).toEqual([16, 16, 16, 16]);
    await session.release();
    expect(() => readCarried("a")).toThrow("carried(a): no bound session has run with the tag carry:a:reset");
  });

  it("carries carry.x when the caller fetches only y, and hands out only y", async () => {
    const session = await boundSession();
    const first = await step(session, 1, "carry:b:reset", ["y"]);
    expect(first).toEqual({ y: [2, 2, 2, 2] });
    expect(await step(session, 100, "carry:b:continue", ["y"])).toEqual({ y: [4, 4, 4, 4] });
    expect(await step(session, 100, "carry:b:continue", ["y"])).toEqual({ y: [6, 6, 6, 6] });
    expect(carriedX("b")).toEqual([4, 4, 4, 4]);
    // Later runs ask for the first run's outputs, as every bound session's do.
    await expect(step(session, 1, "carry:b:reset")).rejects.toThrow(
      "bound run: a bound session runs with the inputs and outputs of its first run",
    );
    await session.release();
  });

  it("refuses a continue before any run set the state, and names an id no session ran with", async () => {
    const session = await boundSession();
    await expect(step(session, 1, "carry:c:continue")).rejects.toThrow(
      "bound run: carry:c:continue before any run set the session's carried state (run it tagged carry:c:reset first)",
    );
    expect(() => readCarried("c")).toThrow("carried(c): no run of that session has set its carried state");
    expect(() => readCarried("nope")).toThrow(
      "carried(nope): no bound session has run with the tag carry:nope:reset or :continue",
    );
    expect((await step(session, 3, "carry:c:reset")).y).toEqual([6, 6, 6, 6]);
    expect(carriedX("c")).toEqual([4, 4, 4, 4]);
    await session.release();
  });

  it("refuses a carry.x whose type or shape is not x's, in one line, run after run", async () => {
    const wrongShape = await boundSession(model({ shapeS: [2, 4] }));
    const wrongType = await boundSession(model({ carryType: "float16" }));
    const feeds = { x: fill(1), s: new ort.Tensor("float32", new Float32Array(8).fill(1), [2, 4]) };
    const refusal =
      "bound run: output carry.x cannot carry into input x: their element types or shapes differ";
    for (let i = 0; i < 2; i++) {
      await expect(wrongShape.run(feeds, ["y"], { tag: "carry:d:reset" })).rejects.toThrow(refusal);
      await expect(step(wrongType, 1, "carry:e:reset", ["y"])).rejects.toThrow(refusal);
    }
    expect(() => readCarried("d")).toThrow("carried(d): no run of that session has set its carried state");
    await Promise.all([wrongShape.release(), wrongType.release()]);
  });
});
