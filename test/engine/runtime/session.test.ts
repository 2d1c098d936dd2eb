import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { PACK_ROW } from "../../../src/engine/graph/emit.js";
import * as G from "../../../src/engine/graph/index.js";
import type { CudaHost } from "../../../src/engine/runtime/cuda.js";
import { resetCudaOptionsForTests } from "../../../src/engine/runtime/cuda-options.js";
import {
  gpuDeviceNodes,
  setCudaHostForTests,
  setGpuNodesForTests,
} from "../../../src/engine/runtime/device.js";
import {
  createSession,
  DeviceUnavailableError,
  releaseAllSessions,
  resolveDevice,
  summarizeProfile,
} from "../../../src/engine/runtime/index.js";
import { sessionOptions } from "../../../src/engine/runtime/session.js";
import { type ConvGeom, host, randn, refConv, relError, rng, values } from "../graph/helpers.js";

const cacheDir = mkdtempSync(join(tmpdir(), "graph-cache-test-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

describe("devices", () => {
  afterEach(() => {
    setGpuNodesForTests(null);
    setCudaHostForTests(null);
  });

  it("finds a GPU's device nodes on Linux: render nodes, NVIDIA's, WSL's — not card nodes or other devices", () => {
    const dev = mkdtempSync(join(tmpdir(), "dev-"));
    try {
      expect(gpuDeviceNodes(dev)).toEqual([]);
      mkdirSync(join(dev, "dri"));
      for (const f of ["dri/card0", "null", "nvidiactl", "nvidia-uvm", "fb0"])
        writeFileSync(join(dev, f), "");
      expect(gpuDeviceNodes(dev)).toEqual([]); // a card node alone is a display (e.g. a VM's), no compute
      for (const f of ["dri/renderD128", "nvidia0", "dxg"]) writeFileSync(join(dev, f), "");
      expect(gpuDeviceNodes(dev).sort()).toEqual(["dri/renderD128", "dxg", "nvidia0"]);
    } finally {
      rmSync(dev, { recursive: true, force: true });
    }
    expect(gpuDeviceNodes(join(tmpdir(), "no-such-dev"))).toEqual([]);
  });

  it("auto skips WebGPU on a machine without a GPU device node (its adapter would be a software renderer)", async () => {
    // No cuda either way (a fake machine whose nvidia-smi is absent), and no GPU node: cpu, whatever
    // adapter a software Vulkan driver (Mesa's lavapipe) would give WebGPU here.
    setCudaHostForTests(() => noCudaHost());
    setGpuNodesForTests(() => []);
    expect(await resolveDevice("auto")).toBe("cpu");
  });

  it("resolves cpu, picks a provider for auto, and names what is wrong otherwise", async () => {
    expect(await resolveDevice("cpu")).toBe("cpu");
    expect(["cuda", "webgpu", "cpu"]).toContain(await resolveDevice("auto"));
    await expect(resolveDevice("tpu" as never)).rejects.toThrow(
      /ENGINE_DEVICE="tpu" is not one of auto, cuda, webgpu, cpu/,
    );
    for (const d of ["webgpu", "cuda"] as const) {
      // Available on a GPU host, not on the CI machine: either way the answer is definite.
      const got = await resolveDevice(d).catch((e: unknown) => e);
      if (got instanceof Error) {
        expect(got).toBeInstanceOf(DeviceUnavailableError);
        expect(got.message).toMatch(new RegExp(`device "${d}" is unavailable on this machine: .+`));
      } else expect(got).toBe(d);
    }
  });
});

/** A machine without CUDA: the provider's check stops at the platform. */
function noCudaHost(): CudaHost {
  return {
    platform: "darwin/arm64",
    onnxruntimeVersion: "1.29.0",
    bindingDir: "/nonexistent",
    loadLibraries: async () => ({}),
    gpus: async () => null,
    npmPack: async () => {
      throw new Error("not on this machine");
    },
  };
}

function linearGraph(name: string, reads: { n: number }, extra = false) {
  const r = rng(5);
  const w = Float32Array.from(randn(r, 64 * 32));
  const g = new G.Graph(name);
  const x = g.input("x", "float32", [2, 32]);
  const wt = g.weight("w", {
    dtype: "float32",
    shape: [64, 32],
    bytes: () => {
      reads.n++;
      return new Uint8Array(w.buffer);
    },
  });
  const y = G.linear(x, wt);
  g.output("y", extra ? G.relu(y) : y);
  return g;
}

describe("session options", () => {
  it("turns memory patterns off for CUDA sessions that capture CUDA graphs, and only for them", () => {
    const graphs = { enable_cuda_graph: "1" };
    try {
      expect(sessionOptions("cuda", { device: "cuda", providerOptions: graphs }).enableMemPattern).toBe(
        false,
      );
      expect(
        sessionOptions("cuda", { device: "cuda", providerOptions: { enable_cuda_graph: true } }),
      ).toMatchObject({ enableMemPattern: false });
      for (const off of [{}, { enable_cuda_graph: "0" }, { prefer_nhwc: "1" }] as Record<string, string>[])
        expect(sessionOptions("cuda", { device: "cuda", providerOptions: off })).not.toHaveProperty(
          "enableMemPattern",
        );
      // Other providers take no CUDA options.
      expect(sessionOptions("cpu", { device: "cpu", providerOptions: graphs })).not.toHaveProperty(
        "enableMemPattern",
      );
    } finally {
      // sessionOptions("cuda") configures the (absent) CUDA add-on: forget it for the other tests.
      resetCudaOptionsForTests();
    }
  });
});

describe("sessions", () => {
  it("writes keyed graphs to the cache as model + external weights and reloads them without reading weights", async () => {
    const reads = { n: 0 };
    const feeds = { x: host("float32", [2, 32], randn(rng(6), 64)) };
    const s1 = await createSession(linearGraph("cached", reads), {
      device: "cpu",
      cacheKey: "test/linear",
      cacheDir,
    });
    const y1 = values((await s1.run(feeds)).y);
    expect(reads.n).toBe(1);
    const dirs = readdirSync(cacheDir);
    expect(dirs).toHaveLength(1);
    expect(dirs[0]).toMatch(/^test_linear-cpu-[0-9a-f]{16}$/);
    expect(readdirSync(join(cacheDir, dirs[0] as string)).sort()).toEqual(["model.onnx", "weights.bin"]);

    const s2 = await createSession(linearGraph("cached", reads), {
      device: "cpu",
      cacheKey: "test/linear",
      cacheDir,
    });
    expect(values((await s2.run(feeds)).y)).toEqual(y1);
    expect(reads.n).toBe(1);

    // A different graph under the same key gets its own entry.
    const s3 = await createSession(linearGraph("cached", reads, true), {
      device: "cpu",
      cacheKey: "test/linear",
      cacheDir,
    });
    expect(readdirSync(cacheDir)).toHaveLength(2);
    expect(values((await s3.run(feeds)).y)).toEqual(y1.map((v) => Math.max(0, v)));
    await releaseAllSessions();
    await expect(s1.run(feeds)).rejects.toThrow(/was released/);
    expect(existsSync(join(cacheDir, dirs[0] as string, "model.onnx"))).toBe(true);
  });

  it("loads a big unkeyed graph through external data in a scratch folder it then removes", async () => {
    const scratch = mkdtempSync(join(tmpdir(), "graph-scratch-test-"));
    const feeds = { x: host("float32", [2, 32], randn(rng(6), 64)) };
    const inline = await createSession(linearGraph("inline", { n: 0 }), { device: "cpu" });
    const external = await createSession(linearGraph("external", { n: 0 }), {
      device: "cpu",
      cacheDir: scratch,
      inlineLimitBytes: 0,
    });
    expect(readdirSync(scratch)).toEqual([]);
    expect(values((await external.run(feeds)).y)).toEqual(values((await inline.run(feeds)).y));
    await Promise.all([inline.release(), external.release()]);
    rmSync(scratch, { recursive: true, force: true });
  });

  it("profiles a session and sums kernel time per op type and provider", async () => {
    const dir = mkdtempSync(join(tmpdir(), "graph-profile-test-"));
    const s = await createSession(linearGraph("profiled", { n: 0 }), {
      device: "cpu",
      profile: join(dir, "prof"),
    });
    await s.run({ x: host("float32", [2, 32], randn(rng(3), 64)) });
    const file = s.endProfiling();
    await s.release();
    expect(file).toMatch(/prof.*\.json$/);
    const rows = summarizeProfile(file as string);
    expect(rows.map((r) => `${r.op}@${r.provider}`)).toContain("MatMul@CPU");
    expect(rows.every((r) => r.nodes >= 1 && r.ms >= 0)).toBe(true);
    rmSync(dir, { recursive: true, force: true });
  });

  it("names the input when a feed is missing or has the wrong shape or array type", async () => {
    const s = await createSession(linearGraph("feeds", { n: 0 }), { device: "cpu" });
    await expect(s.run({})).rejects.toThrow(/graph "feeds": input "x" \(float32\[2,32\]\) was not fed/);
    await expect(s.run({ x: host("float32", [1, 32], randn(rng(1), 32)) })).rejects.toThrow(
      /input "x" must be float32\[2,32\], got float32\[1,32\]/,
    );
    await expect(
      s.run({ x: { dtype: "float32", shape: [2, 32], data: new Float64Array(64) } }),
    ).rejects.toThrow(/needs a Float32Array of 64 values, got Float64Array of 64/);
    await s.release();
  });

  it("runs float16 graphs with softmax and norms in float32, close to the float32 graph", async () => {
    const r = rng(8);
    const xv = randn(r, 2 * 6 * 16);
    const wv = randn(r, 16 * 16).map((v) => v / 4);
    const build = (dtype: "float32" | "float16") => {
      const g = new G.Graph(`mixed-${dtype}`);
      const x = G.cast(g.input("x", "float32", [2, 6, 16]), dtype);
      const raw = Float32Array.from(wv);
      const w = g.weight("w", {
        dtype,
        shape: [16, 16],
        bytes: () => new Uint8Array((dtype === "float16" ? G.f32ToF16(raw) : raw).buffer),
      });
      const ones = g.constant(new Float32Array(16).fill(1), "float32", [16]);
      const zeros = g.constant(new Float32Array(16), "float32", [16]);
      const h = G.layerNorm(G.linear(x, w), G.cast(ones, dtype), G.cast(zeros, dtype));
      const a = G.attention(h, h, h, { heads: 2 });
      g.output("y", G.cast(G.softmax(G.add(a, h), -1), "float32"));
      return g;
    };
    const half = build("float16");
    const ops = G.emitGraph(half).model.graph.node;
    const softmax = ops.find((n) => n.opType === "Softmax");
    const producer = ops.find((n) => n.output.includes(softmax?.input[0] as string));
    expect(producer?.opType).toBe("Cast"); // float16 → float32 before the softmax
    const feeds = { x: host("float32", [2, 6, 16], xv) };
    const s16 = await createSession(half, { device: "cpu" });
    const s32 = await createSession(build("float32"), { device: "cpu" });
    const y16 = values((await s16.run(feeds)).y);
    const y32 = values((await s32.run(feeds)).y);
    await Promise.all([s16.release(), s32.release()]);
    // fp16 has an 11-bit mantissa (ε ≈ 1e-3): a few roundings through linear, norm, attention stay under 1e-2.
    expect(relError(y16, y32)).toBeLessThan(1e-2);
  });

  it("emits k×k convolutions as im2col + MatMul with the same values and gradients as Conv", async () => {
    const geoms: ConvGeom[] = [
      {
        N: 2,
        C: 3,
        H: 7,
        W: 6,
        O: 4,
        KH: 3,
        KW: 3,
        stride: [1, 1],
        pads: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
      },
      {
        N: 1,
        C: 2,
        H: 9,
        W: 8,
        O: 3,
        KH: 3,
        KW: 3,
        stride: [2, 2],
        pads: [0, 0, 1, 1],
        dilation: [1, 1],
        groups: 1,
      },
      {
        N: 1,
        C: 2,
        H: 8,
        W: 9,
        O: 2,
        KH: 2,
        KW: 3,
        stride: [1, 2],
        pads: [2, 0, 1, 1],
        dilation: [2, 1],
        groups: 1,
      },
    ];
    for (const geom of geoms) {
      const r = rng(geom.H * 10 + geom.W);
      const xv = randn(r, geom.N * geom.C * geom.H * geom.W);
      const wv = randn(r, geom.O * geom.C * geom.KH * geom.KW);
      const bv = randn(r, geom.O);
      const ref = refConv(xv, wv, geom);
      const gyv = randn(r, ref.y.length);
      const withGrads = refConv(xv, wv, geom, gyv);
      const g = new G.Graph("im2col");
      const x = g.input("x", "float32", [geom.N, geom.C, geom.H, geom.W]);
      const w = g.input("w", "float32", [geom.O, geom.C, geom.KH, geom.KW]);
      const b = g.input("b", "float32", [geom.O]);
      const gy = g.input("gy", "float32", ref.shape);
      const y = G.conv2d(x, w, b, { stride: geom.stride, padding: geom.pads, dilation: geom.dilation });
      g.output("y", y);
      const loss = G.reduceSum(G.mul(y, gy), [0, 1, 2, 3], false);
      const [dx, dw] = G.grad(loss, [x, w]);
      g.output("dx", dx as G.Tensor);
      g.output("dw", dw as G.Tensor);
      const ops = (convAsMatMul: boolean) =>
        G.emitGraph(g, { convAsMatMul }).model.graph.node.map((n) => n.opType);
      expect(ops(true)).not.toContain("Conv");
      expect(ops(true)).toContain("Gather");
      expect(ops(false)).toContain("Conv");
      const feeds = {
        x: host("float32", [geom.N, geom.C, geom.H, geom.W], xv),
        w: host("float32", [geom.O, geom.C, geom.KH, geom.KW], wv),
        b: host("float32", [geom.O], bv),
        gy: host("float32", ref.shape, gyv),
      };
      const s = await createSession(g, { device: "cpu", convAsMatMul: true });
      const out = await s.run(feeds);
      await s.release();
      const yRef = ref.y.map(
        (v, i) => v + (bv[Math.floor(i / (ref.y.length / geom.N / geom.O)) % geom.O] as number),
      );
      // float32 sums of ≤ 54 products against a float64 reference.
      expect(relError(values(out.y), yRef)).toBeLessThan(1e-5);
      expect(relError(values(out.dx), withGrads.gx)).toBeLessThan(1e-5);
      expect(relError(values(out.dw), withGrads.gw)).toBeLessThan(1e-5);
    }
  });

  it("packs many outputs into one flat tensor per dtype and hands them back by name", async () => {
    const g = new G.Graph("packed");
    const x = g.input("x", "float32", [3, 4]);
    const outs = Array.from({ length: 9 }, (_, i) => G.mul(x, i + 1));
    outs.forEach((t, i) => {
      g.output(`y${i}`, i % 2 ? G.reduceSum(t, [1], true) : t);
    });
    g.output("h", G.cast(x, "float16"));
    const emitted = G.emitGraph(g, { packOutputs: true });
    // Nine float32 outputs through a tree of Concats (≤ 4 inputs each); the lone float16 one stays as is.
    expect(emitted.model.graph.output.map((o) => o.name)).toEqual(["packed_float32", "h"]);
    expect(
      emitted.model.graph.node.filter((n) => n.opType === "Concat").every((n) => n.input.length <= 4),
    ).toBe(true);
    // Concatenated as rows of PACK_ROW values, each output padded to whole rows (12 and 3 values: one
    // row each): onnxruntime's CUDA Concat uploads one int64 per row, not one per value, on every run.
    const packedDims = emitted.model.graph.output[0]?.type?.tensorType?.shape?.dim?.map((d) => d.dimValue);
    expect(packedDims).toEqual([9, PACK_ROW]);
    const xv = randn(rng(4), 12);
    const feeds = { x: host("float32", [3, 4], xv) };
    const packed = await createSession(g, { device: "cpu", packOutputs: true });
    const plain = await createSession(g, { device: "cpu" });
    const [a, b] = [await packed.run(feeds), await plain.run(feeds)];
    await Promise.all([packed.release(), plain.release()]);
    expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
    for (const [k, v] of Object.entries(b)) {
      expect(a[k]?.shape).toEqual(v.shape);
      expect(values(a[k])).toEqual(values(v));
    }
  });

  it("writes a linear layer's transposed weight as a weight of its own instead of a Transpose kernel", async () => {
    const reads = { n: 0 };
    const g = linearGraph("pretransposed", reads);
    const emitted = G.emitGraph(g);
    expect(emitted.model.graph.node.map((n) => n.opType)).not.toContain("Transpose");
    expect(emitted.initializers.map((i) => [i.name, i.shape])).toEqual([["w.T", [32, 64]]]);
    const s = await createSession(g, { device: "cpu" });
    const xv = randn(rng(6), 64);
    const y = values((await s.run({ x: host("float32", [2, 32], xv) })).y);
    await s.release();
    const wv = randn(rng(5), 64 * 32); // linearGraph's weight [64, 32]
    const ref = Array.from({ length: 2 * 64 }, (_, k) => {
      const [i, o] = [Math.floor(k / 64), k % 64];
      let acc = 0;
      for (let j = 0; j < 32; j++) acc += (xv[i * 32 + j] as number) * (wv[o * 32 + j] as number);
      return acc;
    });
    expect(relError(y, ref)).toBeLessThan(1e-6);
    expect(reads.n).toBe(1);
  });
});
