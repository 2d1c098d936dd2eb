/**
 * The CUDA provider's options. onnxruntime-node 1.29 appends the CUDA provider with its device id only;
 * everything else (NHWC convolutions, cuDNN's algorithm search, the arena) stays at onnxruntime's
 * defaults. A small Node add-on (native/cuda-provider-options.c) hands our options to the provider
 * through onnxruntime's C API; `photo-edit-bot setup cuda` builds it beside the provider with the
 * system's C compiler. Without it the provider runs, at its defaults, and the engine says so once.
 *
 * With `enable_cuda_graph=1` the add-on also runs those sessions through IO binding (native/bound-runs.c),
 * which the provider's CUDA graphs need and onnxruntime-node does not offer for CUDA. Sessions with carried
 * state (an output `carry.X` beside an input `X`) are bound too, graphs or not: their state stays on the
 * device from run to run (runs tagged `carry:<id>:reset` / `carry:<id>:continue`; `readCarried` reads it).
 *
 * The options are process-wide: the add-on holds one set and applies it to every CUDA session created
 * after `configureCudaProvider` — the engine and the benchmarks configure it once, before their first
 * session.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { childLogger } from "../../log.js";

const run = promisify(execFile);
const log = childLogger("runtime");

/** The add-on's file name; `setup cuda` puts it beside onnxruntime-node's binding and the provider. */
export const CUDA_OPTIONS_ADDON = "photo_edit_cuda_options.node";

/**
 * What every CUDA session gets unless ENGINE_CUDA_OPTIONS (or a benchmark's --ep-option) says otherwise:
 * onnxruntime's own defaults. Measured on the H200 (docs/PERFORMANCE.md, "CUDA provider options"):
 * prefer_nhwc=1 + cudnn_conv_algo_search=HEURISTIC + fuse_conv_bias=1 took the fp16 UNet step from 16.5
 * to 15.2 ms and Imagic `balanced` from 80.4 to 78.4 s on the whole card, but on a 16 GiB card the same
 * job went from 78.9 to 87.3 s (its sampling session no longer fitted beside training's and was built
 * again), so they are an operator's choice for large cards, not the default.
 */
export const CUDA_OPTION_DEFAULTS: Readonly<Record<string, string>> = {};

/** What the add-on did: the CUDA appends since configure() and the options the last one passed on (or why
 *  not); the sessions it runs through IO binding now and the runs it did that way. */
export interface CudaOptionsStatus {
  calls: number;
  applied: string;
  error: string;
  boundSessions: number;
  boundRuns: number;
}

/** What the add-on exports (native/cuda-provider-options.c, native/bound-runs.c). */
interface Addon {
  configure(library: string, options: string): string;
  status(): CudaOptionsStatus;
  bindAll(on: boolean): void;
  carried(id: string): Record<string, ArrayBuffer>;
}

/** Where the add-on's C sources are (ort-api.h beside them): beside src/ in a checkout, beside dist/ in a build. */
export const ADDON_SOURCES = ["cuda-provider-options.c", "bound-runs.c"].map((f) =>
  fileURLToPath(new URL(`../../../native/${f}`, import.meta.url)),
);

/**
 * "key=value,key=value" (ENGINE_CUDA_OPTIONS) as a record; a message naming the bad part otherwise.
 * Keys are the CUDA provider's own option names (onnxruntime's CUDA execution provider documentation).
 */
export function parseCudaOptions(text: string): Record<string, string> | string {
  const out: Record<string, string> = {};
  for (const part of text.split(",").map((s) => s.trim())) {
    if (part === "") continue;
    const m = /^([a-z][a-z0-9_]*)=([A-Za-z0-9_.-]+)$/.exec(part);
    if (!m) return `"${part}" is not key=value (a CUDA provider option such as prefer_nhwc=1)`;
    out[m[1] as string] = m[2] as string;
  }
  return out;
}

type CudaOptions = Readonly<Record<string, string | number | boolean>>;

/** The defaults with `overrides` laid over them, each value as the provider reads it (booleans as 1/0). */
function mergedOptions(overrides: CudaOptions): Record<string, string> {
  const merged: Record<string, string> = { ...CUDA_OPTION_DEFAULTS };
  for (const [k, v] of Object.entries(overrides))
    merged[k] = typeof v === "boolean" ? (v ? "1" : "0") : String(v);
  return merged;
}

/** The add-on's input: the defaults with `overrides` laid over them, as "k=v;k=v". */
export function cudaOptionsText(overrides: CudaOptions): string {
  return Object.entries(mergedOptions(overrides))
    .map(([k, v]) => `${k}=${v}`)
    .join(";");
}

/** Whether sessions with these options capture CUDA graphs, as the add-on decides it (its value "1"). */
export function capturesCudaGraphs(overrides: CudaOptions): boolean {
  return mergedOptions(overrides).enable_cuda_graph === "1";
}

/** Compiles the add-on into `dir` (atomically); the compiler's first error line when it cannot. */
export async function buildCudaOptionsAddon(
  dir: string,
  opts: { cc?: string; sources?: readonly string[] } = {},
): Promise<string> {
  const req = createRequire(import.meta.url);
  const headers = join(dirname(req.resolve("node-api-headers/package.json")), "include");
  const target = join(dir, CUDA_OPTIONS_ADDON);
  const tmp = `${target}.tmp-${process.pid}`;
  mkdirSync(dir, { recursive: true });
  const cc = opts.cc ?? "cc";
  try {
    await run(
      cc,
      [
        "-shared",
        "-fPIC",
        "-O2",
        "-std=c11",
        "-D_GNU_SOURCE",
        "-I",
        headers,
        ...(opts.sources ?? ADDON_SOURCES),
        "-o",
        tmp,
      ],
      { timeout: 120_000 },
    );
  } catch (e) {
    rmSync(tmp, { force: true });
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === "ENOENT")
      throw new Error(`no C compiler (${cc}) on this machine: install gcc (apt install gcc)`);
    const first = (err.stderr || err.message).split("\n").find((l) => /error/i.test(l)) ?? err.message;
    throw new Error(`${cc} failed: ${first.trim()}`);
  }
  renameSync(tmp, target);
  return target;
}

/** What configuring did: the options the provider gets ("" for onnxruntime's defaults), or why they could not be set. */
export type CudaOptionsOutcome =
  | { ok: true; options: string; onnxruntime?: string }
  | { ok: false; why: string };

let configured: { text: string; outcome: CudaOptionsOutcome } | undefined;
let addon: Addon | undefined;
let attached = false;
let bindingAll = false;

/**
 * Sets the options every later CUDA session gets: the defaults with `overrides` over them. Without the
 * add-on (or when it cannot attach) the provider keeps onnxruntime's defaults, logged once per options set.
 * An option the provider rejects fails the next session's creation with onnxruntime's own message.
 */
export function configureCudaProvider(bindingDir: string, overrides: CudaOptions = {}): CudaOptionsOutcome {
  const text = cudaOptionsText(overrides);
  if (configured?.text !== text) {
    // Nothing to hand over and nothing handed over before: the provider's defaults need no add-on, but
    // where `setup cuda` installed it, it is attached anyway — it keeps training graphs' carried state
    // (LoRA, Adam) on the device. Without it that state crosses to the host and back every step.
    const installed = existsSync(join(bindingDir, CUDA_OPTIONS_ADDON));
    const outcome: CudaOptionsOutcome =
      text === "" && !addon && !installed ? { ok: true, options: "" } : attach(bindingDir, text);
    configured = { text, outcome };
  }
  return configured.outcome;
}

/** Loads the add-on (once) from the binding's folder and hands it `text`. */
function attach(bindingDir: string, text: string): CudaOptionsOutcome {
  try {
    const file = join(bindingDir, CUDA_OPTIONS_ADDON);
    if (!addon) {
      if (!existsSync(file))
        throw new Error(`${CUDA_OPTIONS_ADDON} is not in ${bindingDir}: run \`photo-edit-bot setup cuda\``);
      const mod = { exports: {} as Addon };
      process.dlopen(mod, file);
      addon = mod.exports;
    }
    const onnxruntime = addon.configure(join(bindingDir, "libonnxruntime.so.1"), text);
    attached = true;
    log.info({ options: text }, "CUDA provider options");
    return { ok: true, options: text, onnxruntime };
  } catch (e) {
    const why = (e as Error).message;
    log.warn(
      { why, wanted: text },
      "CUDA provider options not applied: the provider runs with onnxruntime's defaults",
    );
    return { ok: false, why };
  }
}

/** Whether the add-on is loaded and has attached to onnxruntime (a configure succeeded): bound runs and carried
 *  state work from then on. */
export function addonAttached(): boolean {
  return attached;
}

/**
 * The carried state of the session whose runs are tagged `carry:<id>:…`: each carried input `X` (the session's
 * `carry.X` output of its last run) as the bytes of its tensor. Throws when the add-on is not attached, no bound
 * session ran with that id, or none of its runs has set the state yet.
 */
export function readCarried(id: string): Record<string, ArrayBuffer> {
  if (!addon || !attached)
    throw new Error("the CUDA options add-on is not attached: no carried state to read");
  return addon.carried(id);
}

/** What the add-on did at the last CUDA session's creation (the options as the provider took them). */
export function cudaOptionsStatus(): CudaOptionsStatus | null {
  return addon ? addon.status() : null;
}

/**
 * For tests: while on, every session created (any provider) runs through the add-on's IO binding, in host
 * memory off CUDA — the same binding, shape checks and copies that CUDA graphs use, on this machine's CPU.
 * Needs the add-on attached (configureCudaProvider with options).
 */
export function bindAllSessionsForTests(on: boolean): void {
  if (!addon) throw new Error("the CUDA options add-on is not attached");
  addon.bindAll(on);
  bindingAll = on;
}

/** Whether bindAllSessionsForTests(true) is in effect: sessions created now are bound whatever their options. */
export function bindsAllSessions(): boolean {
  return bindingAll;
}

/** For tests: forget the configured options (the add-on stays loaded, as a process keeps it). */
export function resetCudaOptionsForTests(): void {
  configured = undefined;
}
