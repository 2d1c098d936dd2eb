/**
 * Execution-provider choice. `auto` takes cuda when its provider binaries load, else webgpu when a GPU
 * adapter exists, else cpu. A provider is probed by creating a one-node session on it (a failed load or
 * a missing adapter throws there); each answer is cached for the life of the process.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { emitGraph, serializeInline } from "../graph/emit.js";
import { Graph } from "../graph/graph.js";
import { neg } from "../graph/ops.js";
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

/** The CUDA provider's libraries, looked for next to the binding before asking onnxruntime to load
 *  them (which logs a native error when they are missing). */
function missingCudaLibrary(): string | null {
  let bin: string;
  try {
    const pkg = dirname(createRequire(import.meta.url).resolve("onnxruntime-node/package.json"));
    bin = join(pkg, "bin", "napi-v6", process.platform, process.arch);
  } catch {
    return null;
  }
  for (const lib of ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"]) {
    if (process.platform === "linux" && !existsSync(join(bin, lib))) return `${lib} is not in ${bin}`;
  }
  return null;
}

const probes = new Map<ConcreteDevice, Promise<string | null>>();

/** null when `device` works here, else why not. */
export function probeDevice(device: ConcreteDevice): Promise<string | null> {
  let p = probes.get(device);
  if (!p) {
    p = (async () => {
      if (device === "cpu") return null;
      const backend = ort.listSupportedBackends().find((b) => b.name === device);
      if (!backend) return `onnxruntime-node ${ort.env.versions.common} has no ${device} provider`;
      if (device === "cuda") {
        const missing = missingCudaLibrary();
        if (missing) return `its binaries are not installed (${missing})`;
      }
      try {
        const s = await ort.InferenceSession.create(tinyModel(), { executionProviders: [device] });
        await s.release();
        return null;
      } catch (err) {
        // onnxruntime prefixes the reason with a source location and the failed check: keep the reason.
        const why = ((err as Error).message.split("\n")[0] ?? String(err)).replace(/^.* was false\. /, "");
        return backend.bundled ? why : `its binaries are not installed (${why})`;
      }
    })();
    probes.set(device, p);
  }
  return p;
}

/** What `auto` resolved to, decided (and logged) once per process. */
let autoChoice: Promise<ConcreteDevice> | undefined;

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
      const why = await probeDevice(d);
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
