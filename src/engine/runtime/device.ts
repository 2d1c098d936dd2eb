/**
 * Execution-provider choice. `auto` takes cuda when its provider binaries load, else webgpu when a GPU
 * adapter exists (on Linux only beside a GPU's device node: a Vulkan software renderer such as Mesa's
 * lavapipe also gives WebGPU an adapter, the CPU emulating a GPU), else cpu. A provider is probed by
 * creating a one-node session on it (a failed load or a missing adapter throws there); for cuda, the provider's version and the CUDA/cuDNN libraries are
 * checked first (cuda.ts), since a mismatched provider can take the process down instead of throwing.
 * Each answer is cached for the life of the process.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { emitGraph, serializeInline } from "../graph/emit.js";
import { Graph } from "../graph/graph.js";
import { neg } from "../graph/ops.js";
import { type CudaHost, checkCuda, systemCudaHost } from "./cuda.js";
import { ort } from "./ort.js";

export type Device = "auto" | "cuda" | "webgpu" | "cpu";
export type ConcreteDevice = "cuda" | "webgpu" | "cpu";

export const DEVICES: readonly Device[] = ["auto", "cuda", "webgpu", "cpu"];

const log = childLogger("runtime");

/** The operator asked for a provider this machine lacks (or named none we know): one line, no stack. */
export class DeviceUnavailableError extends UserFacingError {
  override name = "DeviceUnavailableError";
}

let probeModel: Uint8Array | undefined;
function tinyModel(): Uint8Array {
  if (!probeModel) {
    const g = new Graph("probe");
    g.output("y", neg(g.input("x", "float32", [1])));
    probeModel = serializeInline(emitGraph(g));
  }
  return probeModel;
}

const probes = new Map<ConcreteDevice, Promise<string | null>>();
/** What `auto` resolved to, decided (and logged) once per process. */
let autoChoice: Promise<ConcreteDevice> | undefined;

/** Where the cuda probe looks (tests substitute a fake machine). */
let cudaHost: () => CudaHost = systemCudaHost;
export function setCudaHostForTests(host: (() => CudaHost) | null): void {
  cudaHost = host ?? systemCudaHost;
  probes.clear();
  autoChoice = undefined;
}

/**
 * The device nodes in `dev` that a hardware GPU's driver makes on Linux: DRM render nodes (Mesa's AMD and
 * Intel drivers, NVIDIA's open module), NVIDIA's own nodes, WSL's GPU. A machine without any has no GPU
 * for WebGPU to use, whatever adapter a software Vulkan driver offers.
 */
export function gpuDeviceNodes(dev = "/dev"): string[] {
  const names = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  return [...names(dev), ...names(join(dev, "dri")).map((n) => `dri/${n}`)].filter((n) =>
    /^(dri\/renderD\d+|nvidia\d+|dxg)$/.test(n),
  );
}

/** Whether this machine has a GPU for WebGPU; elsewhere than Linux the adapter's probe alone decides. */
const systemHasGpu = () => process.platform !== "linux" || gpuDeviceNodes().length > 0;
let hasGpu = systemHasGpu;
/** Tests substitute a machine with or without GPU device nodes (null: this machine again). */
export function setGpuNodesForTests(nodes: (() => string[]) | null): void {
  hasGpu = nodes ? () => nodes().length > 0 : systemHasGpu;
  autoChoice = undefined;
}

/** null when `device` works here, else why not. */
export function probeDevice(device: ConcreteDevice): Promise<string | null> {
  let p = probes.get(device);
  if (!p) {
    p = (async () => {
      if (device === "cpu") return null;
      const backend = ort.listSupportedBackends().find((b) => b.name === device);
      if (!backend) return `onnxruntime-node ${ort.env.versions.common} has no ${device} provider`;
      if (device === "cuda") {
        const report = await checkCuda(cudaHost());
        if (!report.ok) return report.problem;
      }
      try {
        const s = await ort.InferenceSession.create(tinyModel(), { executionProviders: [device] });
        await s.release();
        return null;
      } catch (err) {
        // onnxruntime prefixes the reason with a source location and the failed check: keep the reason.
        const why = ((err as Error).message.split("\n")[0] ?? String(err)).replace(/^.* was false\. /, "");
        return device === "cuda" ? `the CUDA provider failed to start: ${why}` : why;
      }
    })();
    probes.set(device, p);
  }
  return p;
}

/** The provider to run on for `requested`; a clear error when an explicitly asked one is unavailable. */
export async function resolveDevice(requested: Device): Promise<ConcreteDevice> {
  if (!DEVICES.includes(requested)) {
    throw new DeviceUnavailableError(`ENGINE_DEVICE="${requested}" is not one of ${DEVICES.join(", ")}`);
  }
  if (requested !== "auto") {
    const why = await probeDevice(requested);
    if (why) throw new DeviceUnavailableError(`device "${requested}" is unavailable on this machine: ${why}`);
    return requested;
  }
  autoChoice ??= (async () => {
    for (const d of ["cuda", "webgpu"] as const) {
      const why =
        d === "webgpu" && !hasGpu()
          ? "no GPU device node (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg): a WebGPU adapter here would be a software renderer (ENGINE_DEVICE=webgpu still uses it)"
          : await probeDevice(d);
      if (!why) {
        log.info({ device: d }, "auto device");
        return d;
      }
      log.info({ device: d, why }, "device unavailable");
    }
    log.info({ device: "cpu" }, "auto device: no GPU provider available, using cpu");
    return "cpu";
  })();
  return autoChoice;
}
