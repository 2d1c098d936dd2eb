/**
 * Sessions over built graphs. Small graphs go to onnxruntime as an in-memory model; a graph with a
 * cache key (or too many weights for one protobuf) is written once as model.onnx + weights.bin into a
 * cache folder keyed by the key, the device and the graph's structure, and loaded from the path, so a
 * restart skips both the emission and the weight conversion.
 */
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { type DType, numel } from "../graph/dtype.js";
import {
  type EmittedModel,
  emitGraph,
  serializeExternal,
  serializeInline,
  type ValueSpec,
} from "../graph/emit.js";
import type { Graph } from "../graph/graph.js";
import { type CarryMode, carriedInputs, isCarryOutput } from "./carry.js";
import { onnxruntimeNode } from "./cuda.js";
import {
  addonAttached,
  bindsAllSessions,
  capturesCudaGraphs,
  configureCudaProvider,
  readCarried,
} from "./cuda-options.js";
import { type ConcreteDevice, type Device, resolveDevice } from "./device.js";
import { ort } from "./ort.js";
import { latestProfile } from "./profile.js";
import { webgpuAttentionAgrees } from "./webgpu-attention.js";

const log = childLogger("runtime");

export type HostData = Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;
export type HostTensor = { dtype: DType; shape: number[]; data: HostData };

export interface SessionOptions {
  device: Device;
  /** Names the model + graph variant + shapes, e.g. "sd15/unet/b2-64x64/fp16": enables the disk cache. */
  cacheKey?: string;
  /** Where cached graphs live (default: the OS temp folder); also the scratch space for big unkeyed graphs. */
  cacheDir?: string;
  /** Fused kernels for composites (default true); false runs their primitive form (benchmarks, tests). */
  fuse?: boolean;
  /** k×k convolutions as im2col + MatMul (default: on webgpu; see emitGraph). */
  convAsMatMul?: boolean;
  /** Read the outputs back as one flat tensor per dtype (default: on GPU providers; see PackedOutput). */
  packOutputs?: boolean;
  /** Unkeyed graphs with more weight bytes than this load through external data (default 1 GiB). */
  inlineLimitBytes?: number;
  /** Turns on onnxruntime's profiler, writing `<profile>_<timestamp>.json` (see `endProfiling`). */
  profile?: string;
  /** Execution-provider options over the defaults (webgpu: preferredLayout, validationMode, …). */
  providerOptions?: ProviderOptions;
  /** onnxruntime session config entries (`sessionOptions.extra`), e.g. "session.disable_prepacking". */
  sessionConfig?: Record<string, string>;
  /**
   * onnxruntime's graph optimization level (default "all"). Its optimizers cost more than linear time in
   * the node count (a 21 000-node chain: 4.7 s disabled, 52 s basic, 71 s all on 2 busy cores), so a
   * graph of tens of thousands of nodes that is not worth optimizing is loaded with "disabled".
   */
  optimization?: "all" | "basic" | "disabled";
}

/** Options as onnxruntime-node passes them to the provider (webgpu: preferredLayout, validationMode, …;
 *  none is set by default: those measured on the H200 changed nothing, docs/PERFORMANCE.md); on cuda, the
 *  CUDA provider's options over CUDA_OPTION_DEFAULTS, set through the add-on (cuda-options.ts). */
export type ProviderOptions = Record<string, string | boolean | number>;

export interface Session {
  readonly device: ConcreteDevice;
  readonly inputNames: string[];
  readonly outputNames: string[];
  readonly inputs: readonly ValueSpec[];
  readonly outputs: readonly ValueSpec[];
  /** The inputs the graph carries from run to run (runtime/carry.ts): none for most graphs. */
  readonly carried: readonly ValueSpec[];
  /**
   * Runs the graph. Feeds the graph does not use (pruned inputs) are ignored. In a graph with carried
   * inputs, `carry` "reset" (the default) takes them from `feeds` and "continue" from the previous run
   * (`feeds` may then leave them out); the carried outputs are not among the results (`readCarried`).
   */
  run(feeds: Record<string, HostTensor>, opts?: { carry?: CarryMode }): Promise<Record<string, HostTensor>>;
  /** The carried inputs' values for the next run, i.e. what the last run computed. */
  readCarried(): Promise<Record<string, HostTensor>>;
  /** Stops the profiler (sessions created with `profile`) and returns the file it wrote. */
  endProfiling(): string | undefined;
  release(): Promise<void>;
}

/**
 * The device ran out of memory in a run. The message is for the chat user whose job it stopped (the
 * operator's log has onnxruntime's own); as a UserFacingError it fails the job without retries, which
 * would only run out again.
 */
export class DeviceMemoryError extends UserFacingError {
  override name = "DeviceMemoryError";
  constructor(
    readonly device: ConcreteDevice,
    readonly detail: string,
  ) {
    super(
      device === "cpu"
        ? "the engine ran out of memory on this edit: try a smaller photo or a lighter preset"
        : "the engine's GPU ran out of memory on this edit: try a smaller photo or a lighter preset, or try again later",
    );
  }
}

/**
 * A CUDA graph capture (enable_cuda_graph=1) that something broke: seen on the H200 held to 16 GiB, where a
 * capture run met "operation not permitted when stream is capturing" (an allocation the arena could not
 * serve without cudaMalloc, which a capture forbids) and then "operation failed due to a previous error
 * during capture". Taken for out of memory: the engine makes room and runs again, else fails the job.
 */
const CAPTURE_FAILED = /stream is capturing|error during capture/i;

/** onnxruntime's ways of saying an allocation failed (CUDA arena and cudaMalloc, cuBLAS/cuDNN workspaces and
 *  handles — cublasCreate's "CUBLAS failure 3: the resource allocation failed" —, WebGPU buffers, the CPU
 *  allocator); OUT_OF_MEMORY adds a failed CUDA graph capture. */
const ALLOCATION_FAILED =
  /out of memory|failed to allocate memory|_ALLOC_FAILED|resource allocation failed|cudaErrorMemoryAllocation|std::bad_alloc|OutOfMemory|Failed to create buffer/i;
const OUT_OF_MEMORY = new RegExp(`${ALLOCATION_FAILED.source}|${CAPTURE_FAILED.source}`, "i");

/** `err` as a DeviceMemoryError when it is an allocation failure, else unchanged. */
export function asDeviceMemoryError(err: unknown, device: ConcreteDevice): unknown {
  const message = err instanceof Error ? err.message : String(err);
  return OUT_OF_MEMORY.test(message) ? new DeviceMemoryError(device, message.split("\n")[0] ?? message) : err;
}

/** Runs `f`, turning an allocation failure into a DeviceMemoryError (logged with onnxruntime's words). */
async function guardMemory<T>(f: () => Promise<T>, graph: string, device: ConcreteDevice): Promise<T> {
  try {
    return await f();
  } catch (err) {
    const e = asDeviceMemoryError(err, device);
    if (e instanceof DeviceMemoryError && CAPTURE_FAILED.test(e.detail))
      log.error(
        { graph, device, detail: e.detail },
        "CUDA graph capture failed: the provider needed memory while capturing; on this card set enable_cuda_graph=0 in ENGINE_CUDA_OPTIONS",
      );
    else if (e instanceof DeviceMemoryError)
      log.warn({ graph, device, detail: e.detail }, "out of device memory");
    throw e;
  }
}

/** Weights above this total go to external data even without a cache key (protobuf's limit is 2 GB). */
const INLINE_LIMIT = 1 << 30;

/** Each dtype's host array; over an ArrayBuffer for the carried values the add-on copies back. */
const HOST_ARRAY: Record<DType, { new (n: number): HostData; new (b: ArrayBuffer): HostData }> = {
  float32: Float32Array,
  float16: Uint16Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
  bool: Uint8Array,
};

const open = new Set<Session>();
let sessionCount = 0;

/** onnxruntime's session options for `opts` on `device` (exported for its tests). */
export function sessionOptions(
  device: ConcreteDevice,
  opts: SessionOptions,
): ort.InferenceSession.SessionOptions {
  const provider = opts.providerOptions ?? {};
  // onnxruntime-node passes the CUDA provider nothing but a device id: its options go through our add-on.
  if (device === "cuda") configureCudaProvider(onnxruntimeNode().bindingDir, provider);
  // A CUDA graph capture may not allocate device memory, and with memory patterns on the run after the
  // first allocates each pattern's block anew: the run the provider captures (onnxruntime's own CUDA graph
  // tests turn patterns off). Replays allocate nothing, so nothing is lost. On a 16 GiB card the capture
  // failed with patterns on and works with them off (docs/PERFORMANCE.md, "CUDA graphs" and after).
  const graphs = device === "cuda" && capturesCudaGraphs(provider);
  return {
    ...(graphs ? { enableMemPattern: false } : {}),
    executionProviders: [
      device !== "cuda" && Object.keys(provider).length > 0 ? { name: device, ...provider } : device,
    ],
    graphOptimizationLevel: opts.optimization ?? "all",
    logSeverityLevel: 3,
    ...(opts.sessionConfig ? { extra: opts.sessionConfig } : {}),
    ...(opts.profile ? { enableProfiling: true, profileFilePrefix: opts.profile } : {}),
  };
}

function modelFile(emitted: EmittedModel, device: ConcreteDevice, opts: SessionOptions): string {
  const key = (opts.cacheKey ?? emitted.model.graph.name).replace(/[^A-Za-z0-9_.-]+/g, "_");
  const root = opts.cacheDir ?? join(tmpdir(), "photo-edit-bot-graphs");
  const dir = join(root, `${key}-${device}-${emitted.structureHash.slice(0, 16)}`);
  const file = join(dir, "model.onnx");
  if (existsSync(file)) {
    log.debug({ file }, "graph cache hit");
    return file;
  }
  // Written under a temporary name and renamed, so a crash never leaves a half-written model behind.
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const started = Date.now();
  writeFileSync(join(tmp, "model.onnx"), serializeExternal(emitted, join(tmp, "weights.bin"), "weights.bin"));
  // Engines sharing a STATE_DIR may write the same graph at once. A folder with its model.onnx is
  // complete (renames are atomic) and may be loading in another process: never remove it (the chaos
  // run's two engines did, and one's session load failed: "External data path does not exist"). The
  // loser of the rename drops its copy: the same structure hash, the same bytes.
  if (!existsSync(file)) rmSync(dir, { recursive: true, force: true });
  try {
    renameSync(tmp, dir);
  } catch (error) {
    if (!existsSync(file)) throw error;
    rmSync(tmp, { recursive: true, force: true });
    return file;
  }
  log.info({ dir, ms: Date.now() - started }, "graph written to cache");
  return file;
}

export async function createSession(graph: Graph, opts: SessionOptions): Promise<Session> {
  const device = await resolveDevice(opts.device);
  // First: on cuda this attaches the add-on, which decides where carried inputs live.
  const options = sessionOptions(device, opts);
  const carryOnDevice = addonAttached() && (device === "cuda" || bindsAllSessions());
  // On WebGPU, fused attention only where this adapter computes it right (webgpu-attention.ts).
  const fuse =
    device === "webgpu" && opts.fuse !== false && !(await webgpuAttentionAgrees())
      ? (op: string) => op !== "Attention"
      : (opts.fuse ?? true);
  const emitted = emitGraph(graph, {
    device,
    fuse,
    convAsMatMul: opts.convAsMatMul,
    packOutputs: opts.packOutputs ?? device !== "cpu",
    // The add-on copies each carried output into its input's buffer: they must be outputs of their own.
    ...(carryOnDevice ? { unpacked: isCarryOutput } : {}),
  });
  const pairs = carriedInputs(graph.name, emitted.inputs, emitted.outputs);
  const carried = pairs.map((p) => p.input);
  const weightBytes = emitted.initializers.reduce((s, i) => s + i.byteLength, 0);
  const started = Date.now();
  const load = async (): Promise<ort.InferenceSession> => {
    if (opts.cacheKey) return ort.InferenceSession.create(modelFile(emitted, device, opts), options);
    if (weightBytes <= (opts.inlineLimitBytes ?? INLINE_LIMIT))
      return ort.InferenceSession.create(serializeInline(emitted), options);
    // Too big for one protobuf and not worth keeping: external data in a scratch folder, removed once
    // onnxruntime has loaded it.
    const dir = mkdtempSync(join(opts.cacheDir ?? tmpdir(), "graph-"));
    try {
      const file = join(dir, "model.onnx");
      writeFileSync(file, serializeExternal(emitted, join(dir, "weights.bin"), "weights.bin"));
      return await ort.InferenceSession.create(file, options);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const ortSession = await guardMemory(load, graph.name, device);
  // On the device the add-on hands out only what was asked for: the carried outputs stay there.
  const fetched = ortSession.outputNames.filter((n) => !isCarryOutput(n));
  log.debug(
    { graph: graph.name, device, ms: Date.now() - started, nodes: emitted.model.graph.node.length },
    "session created",
  );

  const inputs = emitted.inputs;
  const byName = new Map(inputs.map((v) => [v.name, v]));
  const outputs = emitted.outputs.filter((o) => !isCarryOutput(o.name));
  // Carried state: on the device, the add-on's (runs tagged with this session's id; the host feeds the
  // last values it gave, which the add-on ignores); else the last run's carried outputs, fed back here.
  const carry = {
    id: `s${++sessionCount}`,
    given: undefined as Record<string, HostTensor> | undefined,
    computed: undefined as Record<string, HostTensor> | undefined,
    confirmed: false,
  };
  let released = false;
  const session: Session = {
    device,
    inputNames: inputs.map((v) => v.name),
    outputNames: outputs.map((v) => v.name),
    inputs,
    outputs,
    carried,
    async run(given, runOpts) {
      if (released) throw new Error(`session for graph "${graph.name}" was released`);
      let feeds = given;
      const mode = carried.length > 0 ? (runOpts?.carry ?? "reset") : undefined;
      if (mode === "continue") {
        const state = carryOnDevice ? carry.given : carry.computed;
        if (!state)
          throw new Error(
            `graph "${graph.name}": a run continuing its carried inputs, but no run has set them in this session`,
          );
        feeds = { ...given, ...state };
      } else if (mode === "reset") {
        carry.given = Object.fromEntries(carried.map((c) => [c.name, given[c.name] as HostTensor]));
        carry.computed = undefined;
      }
      const ortFeeds: Record<string, ort.Tensor> = {};
      for (const [name, spec] of byName) {
        const t = feeds[name];
        if (!t)
          throw new Error(
            `graph "${graph.name}": input "${name}" (${spec.dtype}[${spec.shape}]) was not fed`,
          );
        checkFeed(graph.name, spec, t);
        ortFeeds[name] = new ort.Tensor(t.dtype, t.data as never, t.shape);
      }
      const results = await guardMemory(
        () =>
          mode && carryOnDevice
            ? ortSession.run(ortFeeds, fetched, { tag: `carry:${carry.id}:${mode}` })
            : ortSession.run(ortFeeds),
        graph.name,
        device,
      );
      const out: Record<string, HostTensor> = {};
      const parts = new Map<string, HostData>();
      for (const p of emitted.packed) {
        const data = (results[p.name] as ort.Tensor).data as HostData;
        for (const q of p.parts) parts.set(q.name, data.subarray(q.offset, q.offset + q.size));
      }
      const read = (spec: ValueSpec): HostTensor => ({
        dtype: spec.dtype,
        shape: [...spec.shape],
        data: parts.get(spec.name) ?? ((results[spec.name] as ort.Tensor).data as HostData),
      });
      for (const spec of outputs) out[spec.name] = read(spec);
      if (mode === "reset" && carryOnDevice && !carry.confirmed) {
        // Once per session: the add-on holds the state (had it not bound the session, every "continue"
        // would silently start again from the values given here).
        try {
          readCarried(carry.id);
        } catch (e) {
          throw new Error(
            `graph "${graph.name}": the CUDA add-on keeps no carried state of it: ${(e as Error).message}`,
          );
        }
        carry.confirmed = true;
      }
      if (mode && !carryOnDevice) {
        carry.computed = Object.fromEntries(pairs.map((p) => [p.input.name, read(p.output)]));
      }
      return out;
    },
    async readCarried() {
      if (released) throw new Error(`session for graph "${graph.name}" was released`);
      if (!carryOnDevice) {
        if (!carry.computed) throw new Error(`graph "${graph.name}": no run has computed its carried inputs`);
        return carry.computed;
      }
      const buffers = readCarried(carry.id);
      return Object.fromEntries(
        carried.map((c) => {
          const buffer = buffers[c.name];
          if (!buffer) throw new Error(`graph "${graph.name}": the add-on holds no value of ${c.name}`);
          return [c.name, { dtype: c.dtype, shape: [...c.shape], data: new HOST_ARRAY[c.dtype](buffer) }];
        }),
      );
    },
    endProfiling() {
      if (!opts.profile) return undefined;
      ortSession.endProfiling();
      return latestProfile(opts.profile);
    },
    async release() {
      if (released) return;
      released = true;
      open.delete(session);
      await ortSession.release();
    },
  };
  open.add(session);
  return session;
}

function checkFeed(graphName: string, spec: ValueSpec, t: HostTensor): void {
  const want = `${spec.dtype}[${spec.shape}]`;
  if (
    t.dtype !== spec.dtype ||
    t.shape.length !== spec.shape.length ||
    t.shape.some((d, i) => d !== spec.shape[i])
  ) {
    throw new Error(`graph "${graphName}": input "${spec.name}" must be ${want}, got ${t.dtype}[${t.shape}]`);
  }
  if (!(t.data instanceof HOST_ARRAY[spec.dtype]) || t.data.length !== numel(spec.shape)) {
    throw new Error(
      `graph "${graphName}": input "${spec.name}" (${want}) needs a ${HOST_ARRAY[spec.dtype].name} of ${numel(spec.shape)} values, got ${t.data.constructor.name} of ${t.data.length}`,
    );
  }
}

/** Releases every open session (engine shutdown). */
export async function releaseAllSessions(): Promise<void> {
  await Promise.all([...open].map((s) => s.release()));
}
