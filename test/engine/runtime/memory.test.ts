/**
 * Running out of device memory mid-job: onnxruntime's allocation failures become one DeviceMemoryError
 * (a UserFacingError, so the queue does not retry it), and the model's sessions are released so the
 * next job gets the memory back.
 */
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { ort } from "../../../src/engine/runtime/ort.js";
import { asDeviceMemoryError, DeviceMemoryError } from "../../../src/engine/runtime/session.js";
import { UserFacingError } from "../../../src/errors.js";

afterEach(() => vi.restoreAllMocks());

describe("allocation failures", () => {
  // As onnxruntime reports them (CUDA arena and cudaMalloc, cuBLAS/cuDNN, WebGPU, the CPU allocator).
  const oom = [
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. Name:'Conv_12' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 849346560",
    "CUDA failure 2: out of memory ; GPU=0 ; hostname=h200 ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_allocator.cc ; line=47 ; expr=cudaMalloc((void**)&p, size);",
    "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0",
    "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED ; GPU=0",
    "WebGPU validation error: OutOfMemory while calling [Device].CreateBuffer",
    "std::bad_alloc",
  ];
  const other = [
    "input 'x' is missing",
    "CUDA failure 100: no CUDA-capable device is detected",
    "Non-zero status code returned while running MatMul node",
  ];

  it("turns onnxruntime's out-of-memory messages into one line for the chat user, keeping the detail", () => {
    for (const m of oom) {
      const e = asDeviceMemoryError(new Error(`${m}\nstack…`), "cuda");
      expect(e).toBeInstanceOf(DeviceMemoryError);
      expect(e).toBeInstanceOf(UserFacingError);
      expect((e as DeviceMemoryError).message).toBe(
        "the engine's GPU ran out of memory on this edit: try a smaller photo or a lighter preset, or try again later",
      );
      expect((e as DeviceMemoryError).detail).toBe(m);
    }
    for (const m of other) {
      const err = new Error(m);
      expect(asDeviceMemoryError(err, "cuda")).toBe(err);
    }
    expect((asDeviceMemoryError(new Error("std::bad_alloc"), "cpu") as Error).message).toBe(
      "the engine ran out of memory on this edit: try a smaller photo or a lighter preset",
    );
  });
});

describe("a model whose device runs out of memory mid-job", () => {
  let sd: StableDiffusion | undefined;
  afterAll(() => sd?.release());

  it("fails that call with DeviceMemoryError, releases its sessions, and serves the next call", async () => {
    sd = await StableDiffusion.load("test/fixtures/models/sd1/model", { device: "cpu", dtype: "fp32" });
    const latents = Float32Array.from({ length: 4 * 8 * 8 }, (_, i) => Math.sin(i));
    const context = await sd.encodeText(["a cat"]);
    const before = await sd.predictNoise(latents, { height: 8, width: 8 }, 500, context);

    const release = vi.spyOn(sd, "release");
    // onnxruntime's session class (typed as a factory): its run rejects once, as the CUDA allocator would.
    const sessionClass = ort.InferenceSession as unknown as { prototype: { run: () => Promise<unknown> } };
    vi.spyOn(sessionClass.prototype, "run").mockRejectedValueOnce(
      new Error("CUDA failure 2: out of memory ; GPU=0"),
    );
    await expect(sd.predictNoise(latents, { height: 8, width: 8 }, 500, context)).rejects.toBeInstanceOf(
      DeviceMemoryError,
    );
    expect(release).toHaveBeenCalledTimes(1);

    // Every session was released; the next call rebuilds what it needs and computes the same thing.
    expect(await sd.predictNoise(latents, { height: 8, width: 8 }, 500, context)).toEqual(before);
  });
});
