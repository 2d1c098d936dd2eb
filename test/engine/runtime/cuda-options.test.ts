/**
 * The CUDA provider's options: parsing ENGINE_CUDA_OPTIONS, building the add-on, and the add-on itself on
 * this machine's (CPU-only) onnxruntime — it attaches to the binding's libonnxruntime, sees the binding's
 * CUDA append, and leaves onnxruntime's own answer in place when there is no CUDA provider. Whether the
 * provider takes the options is checked on the lent GPU (`gpu-cuda.sh cuda-options`, docs/PERFORMANCE.md).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { emitGraph, serializeInline } from "../../../src/engine/graph/emit.js";
import { Graph } from "../../../src/engine/graph/graph.js";
import { add, cast, matmul, mul, neg } from "../../../src/engine/graph/ops.js";
import {
  ADDON_SOURCES,
  addonAttached,
  bindAllSessionsForTests,
  bindsAllSessions,
  buildCudaOptionsAddon,
  CUDA_OPTION_DEFAULTS,
  CUDA_OPTIONS_ADDON,
  configureCudaProvider,
  cudaOptionsStatus,
  cudaOptionsText,
  parseCudaOptions,
  readCarried,
  resetCudaOptionsForTests,
} from "../../../src/engine/runtime/cuda-options.js";
import { ort } from "../../../src/engine/runtime/ort.js";
import { addonBesideOnnxruntime } from "../../helpers/cuda-options-addon.js";

const root = mkdtempSync(join(tmpdir(), "cuda-options-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("ENGINE_CUDA_OPTIONS", () => {
  it("parses key=value pairs and names the part that is not one", () => {
    expect(parseCudaOptions("prefer_nhwc=1, cudnn_conv_algo_search=HEURISTIC")).toEqual({
      prefer_nhwc: "1",
      cudnn_conv_algo_search: "HEURISTIC",
    });
    expect(parseCudaOptions("")).toEqual({});
    expect(parseCudaOptions("prefer_nhwc")).toBe(
      '"prefer_nhwc" is not key=value (a CUDA provider option such as prefer_nhwc=1)',
    );
    // A ';' or '=' in a value would split the add-on's "k=v;k=v" differently from what was meant.
    expect(parseCudaOptions("gpu_mem_limit=1;prefer_nhwc=1")).toMatch(
      /^"gpu_mem_limit=1;prefer_nhwc=1" is not/,
    );
    expect(parseCudaOptions("Prefer_NHWC=1")).toMatch(/is not key=value/);
  });

  it("lays the overrides over the defaults, booleans as 1/0", () => {
    const pairs = (o: Parameters<typeof cudaOptionsText>[0]) =>
      Object.fromEntries(
        cudaOptionsText(o)
          .split(";")
          .filter((p) => p !== "")
          .map((p) => p.split("=") as [string, string]),
      );
    expect(pairs({})).toEqual(CUDA_OPTION_DEFAULTS);
    expect(pairs({ prefer_nhwc: true, fuse_conv_bias: false, gpu_mem_limit: 1024 })).toEqual({
      ...CUDA_OPTION_DEFAULTS,
      prefer_nhwc: "1",
      fuse_conv_bias: "0",
      gpu_mem_limit: "1024",
    });
  });
});

describe("building the add-on", () => {
  it("says in one line when there is no compiler or the source does not compile", async () => {
    await expect(buildCudaOptionsAddon(join(root, "none"), { cc: "photo-edit-no-such-cc" })).rejects.toThrow(
      "no C compiler (photo-edit-no-such-cc) on this machine: install gcc (apt install gcc)",
    );
    const broken = join(root, "broken.c");
    writeFileSync(broken, "int main( {\n");
    const err = await buildCudaOptionsAddon(join(root, "broken"), { sources: [broken] }).catch(
      (e: Error) => e,
    );
    expect((err as Error).message).toMatch(/^cc failed: .*error/);
    expect(existsSync(join(root, "broken", CUDA_OPTIONS_ADDON))).toBe(false);
  });
});

describe("the add-on on this machine's onnxruntime (no CUDA provider)", () => {
  const dir = join(root, "binding");
  beforeAll(() => addonBesideOnnxruntime(dir));

  const probeModel = () => {
    const g = new Graph("probe");
    g.output("y", neg(g.input("x", "float32", [1])));
    return serializeInline(emitGraph(g));
  };
  const cudaSessionError = () =>
    ort.InferenceSession.create(probeModel(), { executionProviders: ["cuda"], logSeverityLevel: 4 }).then(
      () => "created",
      (e: Error) => e.message,
    );

  it("is missing: the provider keeps onnxruntime's defaults, and the reason names setup cuda", () => {
    resetCudaOptionsForTests();
    // onnxruntime's own defaults need no add-on: none is looked for.
    expect(configureCudaProvider(join(root, "empty"))).toEqual({ ok: true, options: "" });
    expect(cudaOptionsStatus()).toBeNull();
    const r = configureCudaProvider(join(root, "empty"), { prefer_nhwc: 1 });
    expect(r).toEqual({
      ok: false,
      why: `${CUDA_OPTIONS_ADDON} is not in ${join(root, "empty")}: run \`photo-edit-bot setup cuda\``,
    });
    expect(addonAttached()).toBe(false);
    expect(() => readCarried("s1")).toThrow(
      "the CUDA options add-on is not attached: no carried state to read",
    );
  });

  it("attaches to the binding's onnxruntime, sees its CUDA append and keeps onnxruntime's own error", async () => {
    const before = await cudaSessionError();
    expect(before).not.toBe("created");
    resetCudaOptionsForTests();
    // With onnxruntime's defaults too, once `setup cuda` has installed it: it keeps training graphs'
    // carried state on the device.
    expect(configureCudaProvider(dir)).toEqual({
      ok: true,
      options: "",
      onnxruntime: ort.env.versions.common,
    });
    expect(addonAttached()).toBe(true);
    const r = configureCudaProvider(dir, { prefer_nhwc: 1 });
    expect(r).toEqual({
      ok: true,
      options: cudaOptionsText({ prefer_nhwc: 1 }),
      onnxruntime: ort.env.versions.common,
    });
    expect(addonAttached()).toBe(true);
    expect(await cudaSessionError()).toBe(before);
    const status = cudaOptionsStatus();
    // The binding called our entry once; reading the options needed the provider, which is not here.
    expect(status?.calls).toBe(1);
    expect(status?.applied).toBe("");
    expect(status?.error).toMatch(
      /^reading the CUDA provider options: .*libonnxruntime_providers_shared\.so/,
    );
    // Configuring again with the same options is a no-op; other options replace them for later sessions.
    expect(configureCudaProvider(dir, { prefer_nhwc: 1 })).toBe(r);
    expect(configureCudaProvider(dir, { prefer_nhwc: 0 })).toMatchObject({ ok: true });
    expect(await cudaSessionError()).toBe(before);
    expect(cudaOptionsStatus()?.calls).toBe(2);
  });

  describe("bound runs (IO binding, what CUDA graphs need), on the CPU provider", () => {
    // y = x·w + b (float32) and its float16 copy: two inputs, two outputs of different types.
    const model = () => {
      const g = new Graph("bound");
      const x = g.input("x", "float32", [2, 3]);
      const w = g.input("w", "float32", [3, 4]);
      const y = add(matmul(x, w), g.input("b", "float32", [4]));
      g.output("y", y);
      g.output("y16", cast(mul(y, y), "float16"));
      return serializeInline(emitGraph(g));
    };
    const feeds = (seed: number, rows = 2) => ({
      x: new ort.Tensor(
        "float32",
        Float32Array.from({ length: rows * 3 }, (_, i) => Math.sin(seed + i)),
        [rows, 3],
      ),
      w: new ort.Tensor(
        "float32",
        Float32Array.from({ length: 12 }, (_, i) => Math.cos(seed * i)),
        [3, 4],
      ),
      b: new ort.Tensor(
        "float32",
        Float32Array.from({ length: 4 }, (_, i) => seed - i),
        [4],
      ),
    });
    const values = (r: ort.InferenceSession.ReturnType, name: string) => {
      const t = r[name];
      if (!t) throw new Error(`no output ${name}`);
      return [...(t.data as Float32Array | Uint16Array)];
    };
    const plain = (s: ort.InferenceSession, f: ReturnType<typeof feeds>) =>
      s.run(f).then((r) => ({ y: values(r, "y"), y16: values(r, "y16") }));

    // The add-on attached (any options: attaching installs the bound-run hooks), whichever test runs first.
    beforeAll(() => {
      configureCudaProvider(dir, { prefer_nhwc: 1 });
    });

    it("give what plain runs give, run after run, into outputs of their own, and stop at release", async () => {
      const reference = await ort.InferenceSession.create(model());
      bindAllSessionsForTests(true);
      expect(bindsAllSessions()).toBe(true);
      const file = join(root, "bound.onnx");
      writeFileSync(file, model());
      // From bytes (CreateSessionFromArray) and from a file (CreateSession): both are bound.
      const fromBytes = await ort.InferenceSession.create(model());
      const fromFile = await ort.InferenceSession.create(file);
      bindAllSessionsForTests(false);
      expect(bindsAllSessions()).toBe(false);
      const before = cudaOptionsStatus();
      expect(before?.boundSessions).toBe(2);
      for (const bound of [fromBytes, fromFile]) {
        const first = await bound.run(feeds(1));
        const firstY = values(first, "y");
        // Each run's inputs are copied in anew, and its outputs are new tensors: the first run's stay as they were.
        for (const seed of [2, 3, 1])
          expect(await plain(bound, feeds(seed))).toEqual(await plain(reference, feeds(seed)));
        expect(values(first, "y")).toEqual(firstY);
        expect(firstY).toEqual((await plain(reference, feeds(1))).y);
      }
      expect(cudaOptionsStatus()?.boundRuns).toBe((before?.boundRuns ?? 0) + 8);
      await fromBytes.release();
      expect(cudaOptionsStatus()?.boundSessions).toBe(1);
      await fromFile.release();
      expect(cudaOptionsStatus()?.boundSessions).toBe(0);
      // A session created after bindAll(false) runs plainly.
      const later = await ort.InferenceSession.create(model());
      const runs = cudaOptionsStatus()?.boundRuns;
      expect(await plain(later, feeds(4))).toEqual(await plain(reference, feeds(4)));
      expect(cudaOptionsStatus()?.boundRuns).toBe(runs);
      await Promise.all([later.release(), reference.release()]);
    });

    it("refuse a run whose inputs differ in shape from the first run's, in one line", async () => {
      bindAllSessionsForTests(true);
      const bound = await ort.InferenceSession.create(model());
      bindAllSessionsForTests(false);
      await bound.run(feeds(1));
      await expect(bound.run(feeds(1, 3))).rejects.toThrow(
        "bound run: input x changed its type or shape since the session's first run (a bound session keeps one shape: CUDA graphs replay the first)",
      );
      // A run with the first shape still goes.
      expect((await bound.run(feeds(5))).y?.dims).toEqual([2, 4]);
      await bound.release();
    });
  });

  it("holds the OrtApi positions onnxruntime's C API header gives (scripts/onnxruntime-headers.sh)", () => {
    const header = join(process.cwd(), ".cache/onnxruntime-headers/onnxruntime_c_api.h");
    if (!existsSync(header))
      throw new Error(`${header} is missing: run \`bash scripts/onnxruntime-headers.sh\` (.ci/run does)`);
    // Our names for the entries, as native/ort-api.h declares them: ORT_NAME = index.
    const ours = new Map(
      [
        ...readFileSync(join(dirname(ADDON_SOURCES[0] as string), "ort-api.h"), "utf8").matchAll(
          /^\s+ORT_([A-Z0-9_]+) = (\d+),$/gm,
        ),
      ].map((m) => [m[1] as string, Number(m[2])]),
    );
    const fields: Record<string, string> = {
      CREATE_STATUS: "CreateStatus",
      GET_ERROR_MESSAGE: "GetErrorMessage",
      CREATE_SESSION: "CreateSession",
      CREATE_SESSION_FROM_ARRAY: "CreateSessionFromArray",
      RUN: "Run",
      SESSION_GET_INPUT_COUNT: "SessionGetInputCount",
      SESSION_GET_OUTPUT_COUNT: "SessionGetOutputCount",
      SESSION_GET_INPUT_NAME: "SessionGetInputName",
      SESSION_GET_OUTPUT_NAME: "SessionGetOutputName",
      RUN_OPTIONS_GET_RUN_TAG: "RunOptionsGetRunTag",
      CREATE_TENSOR_AS_ORT_VALUE: "CreateTensorAsOrtValue",
      GET_TENSOR_MUTABLE_DATA: "GetTensorMutableData",
      GET_TENSOR_ELEMENT_TYPE: "GetTensorElementType",
      GET_DIMENSIONS_COUNT: "GetDimensionsCount",
      GET_DIMENSIONS: "GetDimensions",
      GET_TENSOR_TYPE_AND_SHAPE: "GetTensorTypeAndShape",
      CREATE_MEMORY_INFO: "CreateMemoryInfo",
      ALLOCATOR_FREE: "AllocatorFree",
      GET_ALLOCATOR_WITH_DEFAULT_OPTIONS: "GetAllocatorWithDefaultOptions",
      RELEASE_STATUS: "ReleaseStatus",
      RELEASE_MEMORY_INFO: "ReleaseMemoryInfo",
      RELEASE_SESSION: "ReleaseSession",
      RELEASE_VALUE: "ReleaseValue",
      RELEASE_TENSOR_TYPE_AND_SHAPE_INFO: "ReleaseTensorTypeAndShapeInfo",
      CREATE_ALLOCATOR: "CreateAllocator",
      RELEASE_ALLOCATOR: "ReleaseAllocator",
      RUN_WITH_BINDING: "RunWithBinding",
      CREATE_IO_BINDING: "CreateIoBinding",
      RELEASE_IO_BINDING: "ReleaseIoBinding",
      BIND_INPUT: "BindInput",
      BIND_OUTPUT: "BindOutput",
      BIND_OUTPUT_TO_DEVICE: "BindOutputToDevice",
      GET_BOUND_OUTPUT_VALUES: "GetBoundOutputValues",
      CLEAR_BOUND_OUTPUTS: "ClearBoundOutputs",
      APPEND_CUDA_V2: "SessionOptionsAppendExecutionProvider_CUDA_V2",
      UPDATE_CUDA_OPTIONS: "UpdateCUDAProviderOptions",
      CUDA_OPTIONS_AS_STRING: "GetCUDAProviderOptionsAsString",
    };
    expect([...ours.keys()].sort()).toEqual(Object.keys(fields).sort());
    const program = join(root, "offsets.c");
    writeFileSync(
      program,
      `#include <stdio.h>\n#include <stddef.h>\n#include "onnxruntime_c_api.h"\nint main(void) {\n${Object.entries(
        fields,
      )
        .map(([ours, f]) => `  printf("${ours} %zu\\n", offsetof(OrtApi, ${f}) / sizeof(void*));`)
        .join("\n")}\n  return 0;\n}\n`,
    );
    execFileSync("cc", ["-I", join(header, ".."), program, "-o", join(root, "offsets")]);
    const theirs = new Map(
      execFileSync(join(root, "offsets"), { encoding: "utf8" })
        .trim()
        .split("\n")
        .map((l) => l.split(" ") as [string, string])
        .map(([k, v]) => [k, Number(v)]),
    );
    expect(ours).toEqual(theirs);
  });
});
