/**
 * Running out of device memory mid-job: onnxruntime's allocation failures become one DeviceMemoryError
 * (a UserFacingError, so the queue does not retry it), and the model's sessions are released so the
 * next job gets the memory back.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { StableDiffusion } from "../../../src/engine/index.js";
import { renderImagic, trainImagic } from "../../../src/engine/pipelines/imagic.js";
import { ort } from "../../../src/engine/runtime/ort.js";
import { asDeviceMemoryError, DeviceMemoryError } from "../../../src/engine/runtime/session.js";
import { UserFacingError } from "../../../src/errors.js";
import {
  fastOptions,
  fixedDraws,
  loadFixtureModel,
  smoothPhoto,
  trainingOn,
} from "../pipelines/imagic-fixture.js";

afterEach(() => vi.restoreAllMocks());

describe("allocation failures", () => {
  // As onnxruntime reports them (CUDA arena and cudaMalloc, cuBLAS/cuDNN, WebGPU, the CPU allocator).
  const oom = [
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. Name:'Conv_12' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 849346560",
    "CUDA failure 2: out of memory ; GPU=0 ; hostname=h200 ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_allocator.cc ; line=47 ; expr=cudaMalloc((void**)&p, size);",
    "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0",
    // onnxruntime 1.29 + CUDA 13, a session's cuBLAS handle on a full 16 GiB card (the H200 with ballast)
    "CUBLAS failure 3: the resource allocation failed ; GPU=0 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_stream_handle.cc ; line=79 ; expr=cublasCreate(&cublas_handle_);",
    "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED ; GPU=0",
    "WebGPU validation error: OutOfMemory while calling [Device].CreateBuffer",
    // A CUDA graph capture (enable_cuda_graph=1) on the H200 held to 16 GiB: the kernel's error, then the run's.
    "Non-zero status code returned while running Reshape node. Name:'Reshape_32' Status Message: CUDA error cudaErrorStreamCaptureUnsupported:operation not permitted when stream is capturing",
    "CUDA failure 901: operation failed due to a previous error during capture ; GPU=0 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_graph.cc ; line=61 ; expr=cudaStreamEndCapture(stream_, &graph);",
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

/**
 * A device with room for `room` sessions: onnxruntime's session creation fails as the CUDA arena does
 * (bfc_arena's message) while that many are open. Returns the open ones.
 */
function deviceWithRoomFor(room: number): Set<unknown> {
  const open = new Set<unknown>();
  let building = 0; // a session takes its room when its build starts
  const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (
    ...a: unknown[]
  ) => Promise<ort.InferenceSession>;
  vi.spyOn(ort.InferenceSession, "create").mockImplementation((async (...args: unknown[]) => {
    if (open.size + building >= room)
      throw new Error(
        "/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory for requested buffer of size 3276800",
      );
    building++;
    const session = await create(...args).finally(() => building--);
    open.add(session);
    const release = session.release.bind(session);
    session.release = () => {
      open.delete(session);
      return release();
    };
    return session;
  }) as never);
  return open;
}

const SIZE = { height: 8, width: 8 };
const latents = Float32Array.from({ length: 4 * 8 * 8 }, (_, i) => Math.sin(i));

describe("a model whose device runs out of memory mid-job", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load("test/fixtures/models/sd1/model", { device: "cpu", dtype: "fp32" });
  });
  afterEach(() => sd.release());
  afterAll(() => sd?.release());

  // onnxruntime's session class (typed as a factory): its run rejects, as the CUDA allocator would.
  const sessionClass = ort.InferenceSession as unknown as {
    prototype: { run: () => Promise<unknown>; release: () => Promise<void> };
  };
  const failRuns = () => vi.spyOn(sessionClass.prototype, "run");
  const oom = new Error("CUDA failure 2: out of memory ; GPU=0");

  it("releases the model's other sessions and runs the call again", async () => {
    const context = await sd.encodeText(["a cat"]);
    const before = await sd.predictNoise(latents, SIZE, 500, context);
    const release = vi.spyOn(sd, "release");
    const sessions = vi.spyOn(sessionClass.prototype, "release");
    failRuns().mockRejectedValueOnce(oom);
    expect(await sd.predictNoise(latents, SIZE, 500, context)).toEqual(before);
    expect(sessions).toHaveBeenCalledTimes(1); // the text encoder's, not the UNet's
    expect(release).not.toHaveBeenCalled();
    expect(await sd.encodeText(["a cat"])).toEqual(context); // rebuilt on demand
  });

  it("out of memory again: fails that call with DeviceMemoryError, releases every session, serves the next call", async () => {
    const context = await sd.encodeText(["a cat"]);
    const before = await sd.predictNoise(latents, SIZE, 500, context);
    const release = vi.spyOn(sd, "release");
    failRuns().mockRejectedValueOnce(oom).mockRejectedValueOnce(oom);
    await expect(sd.predictNoise(latents, SIZE, 500, context)).rejects.toBeInstanceOf(DeviceMemoryError);
    expect(release).toHaveBeenCalledTimes(1);
    // Every session was released; the next call rebuilds what it needs and computes the same thing.
    expect(await sd.predictNoise(latents, SIZE, 500, context)).toEqual(before);
  });

  it("alone on the device and out of memory: fails at once", async () => {
    const context = await sd.encodeText(["a cat"]);
    await sd.predictNoise(latents, SIZE, 500, context);
    await sd.release();
    await sd.predictNoise(latents, SIZE, 500, context); // only the UNet's session is open
    const runs = failRuns().mockRejectedValueOnce(oom);
    await expect(sd.predictNoise(latents, SIZE, 500, context)).rejects.toBeInstanceOf(DeviceMemoryError);
    expect(runs).toHaveBeenCalledTimes(1);
  });
});

describe("the VAE decoder, a job's largest activations", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await StableDiffusion.load("test/fixtures/models/sd1/model", { device: "cpu", dtype: "fp32" });
  });
  afterAll(() => sd?.release());

  it("decodes a batch one image per run, with one session for every batch size", async () => {
    const three = Float32Array.from({ length: 3 * latents.length }, (_, i) => Math.cos(i / 7));
    const creates = vi.spyOn(ort.InferenceSession, "create");
    const alone = [];
    for (let i = 0; i < 3; i++)
      alone.push(await sd.decodeLatents(three.slice(i * latents.length, (i + 1) * latents.length), SIZE));
    const batched = await sd.decodeLatents(three, SIZE);
    expect(creates).toHaveBeenCalledTimes(1);
    const per = batched.length / 3;
    expect(alone.map((a) => a.length)).toEqual([per, per, per]);
    alone.forEach((a, i) => {
      expect(batched.subarray(i * per, (i + 1) * per)).toEqual(a);
    });
  });
});

describe("a device with room for one session at a time", () => {
  let sd: StableDiffusion;
  beforeAll(async () => {
    sd = await loadFixtureModel();
  });
  afterAll(() => sd?.release());

  it("serves calls made at once, a build waiting for the runs of the sessions it releases", async () => {
    const context = await sd.encodeText(["a cat", "a dog"]);
    const noise = await sd.predictNoise(latents, SIZE, 500, context.subarray(0, context.length / 2));
    const image = await sd.decodeLatents(latents, SIZE);
    await sd.release();

    const open = deviceWithRoomFor(1);
    const calls = () =>
      Promise.all([
        sd.encodeText(["a cat", "a dog"]),
        sd.predictNoise(latents, SIZE, 500, context.subarray(0, context.length / 2)),
        sd.decodeLatents(latents, SIZE),
      ]);
    for (let round = 0; round < 3; round++) expect(await calls()).toEqual([context, noise, image]);
    expect(open.size).toBe(1);
    vi.restoreAllMocks();
    await sd.release();
  });

  it("runs Imagic's training and render, each session built after releasing the one before, as on a roomy device", async () => {
    const photo = smoothPhoto();
    const train = () =>
      trainImagic(sd, {
        ...trainingOn(photo),
        draws: fixedDraws,
        options: fastOptions(
          { embedding: { steps: 2 }, finetune: { steps: 2 } },
          { loraRank: 4, loraAlpha: 4 },
        ),
      });
    const render = (state: Awaited<ReturnType<typeof train>>) =>
      renderImagic(sd, state, { etas: [0.7], seeds: [3], guidance: 7.5, steps: 3, batch: 1 });
    const roomy = await train();
    const [roomyImage] = await render(roomy);
    await sd.release();

    const open = deviceWithRoomFor(1);
    const creates = vi.mocked(ort.InferenceSession.create);
    const state = await train();
    const [image] = await render(state);
    // The same sessions (rebuilt from the graph cache) compute the same numbers.
    expect(state.losses).toEqual(roomy.losses);
    expect(image?.image).toEqual(roomyImage?.image);
    expect(open.size).toBe(1);
    // Every build after the first ran out of room once and then succeeded.
    const failed = creates.mock.settledResults.filter((r) => r.type === "rejected");
    expect(failed.length).toBeGreaterThanOrEqual(3);
    expect(creates.mock.settledResults.length - failed.length).toBe(failed.length + 1);
  });
});
