/**
 * onnxruntime's CUDA provider: which build fits the installed onnxruntime-node, installing it from the
 * npm registry next to the binding (`photo-edit-bot setup cuda`), and checking that it can load here —
 * the provider's onnxruntime version, the CUDA 13 and cuDNN 9 libraries, the NVIDIA driver and a GPU.
 * Loading a provider built for another onnxruntime, or one whose libraries are missing, fails deep in
 * native code (or crashes the process), so these checks run before onnxruntime ever sees it, and each
 * failure is one line naming what is missing and how to get it.
 *
 * Everything that touches the machine goes through a `CudaHost`, so tests drive the checks with fakes.
 */
import { execFile } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A CUDA provider build published on the npm registry, and what it needs to load. */
export interface CudaProviderBuild {
  /** The onnxruntime version it was built from: it loads into that onnxruntime-node only. */
  onnxruntime: string;
  package: string;
  version: string;
  /** Where the libraries sit inside the package tarball. */
  dir: string;
  cuda: number;
  cudnn: number;
  /** The oldest NVIDIA driver (major) that runs this CUDA. */
  minDriver: number;
}

/**
 * The one such build today: Microsoft's MIT-licensed binaries of onnxruntime 1.29.0 for CUDA 13 + cuDNN
 * 9, republished on npm by the onnxruntime-unity project. onnxruntime-node's own install script fetches
 * the equivalent from NuGet, which hosts that reach only the npm registry cannot.
 */
export const CUDA_PROVIDER_BUILDS: readonly CudaProviderBuild[] = [
  {
    onnxruntime: "1.29.0",
    package: "com.github.asus4.onnxruntime.linux-x64-gpu",
    version: "0.4.9",
    dir: "package/Plugins/Linux/x64",
    cuda: 13,
    cudnn: 9,
    minDriver: 580,
  },
];

/** The provider's two libraries, as onnxruntime looks for them next to its own. */
export const PROVIDER_LIBRARIES = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"];
/** Written by `setup cuda` beside the libraries: which build they are (saves scanning 230 MB per start). */
export const PROVIDER_STAMP = "onnxruntime_providers_cuda.json";

/** What the machine answers; the real one is `systemCudaHost()`. */
export interface CudaHost {
  platform: string;
  /** The installed onnxruntime-node's version. */
  onnxruntimeVersion: string;
  /** The folder holding onnxruntime-node's binding and libonnxruntime (where the provider goes). */
  bindingDir: string;
  /** For each shared library (by soname), null when it loads in a fresh process, else the loader's error. */
  loadLibraries(names: readonly string[]): Promise<Record<string, string | null>>;
  /** The GPUs nvidia-smi lists; null when there is no nvidia-smi; a string when it failed (its message). */
  gpus(): Promise<GpuInfo[] | string | null>;
  /** `npm pack <spec>` into `dir`: the tarball's path. */
  npmPack(spec: string, dir: string): Promise<string>;
}

export interface GpuInfo {
  name: string;
  /** e.g. "580.65.06" */
  driver: string;
  memoryMiB: number;
}

/** The outcome of the checks: the first problem (one line) and each check's result. */
export interface CudaReport {
  ok: boolean;
  /** One line: what is missing and what to do; null when everything needed is there. */
  problem: string | null;
  checks: { name: string; ok: boolean; detail: string }[];
  build?: CudaProviderBuild;
  gpus?: GpuInfo[];
}

/** The build for this machine and onnxruntime-node, or why there is none (one line). */
export function providerBuild(
  host: Pick<CudaHost, "platform" | "onnxruntimeVersion">,
): CudaProviderBuild | string {
  if (host.platform !== "linux/x64")
    return `the CUDA provider build on the npm registry is for Linux x64; this machine is ${host.platform}`;
  const build = CUDA_PROVIDER_BUILDS.find((b) => b.onnxruntime === host.onnxruntimeVersion);
  if (build) return build;
  return `onnxruntime-node ${host.onnxruntimeVersion} has no CUDA provider build on the npm registry (there is one for ${CUDA_PROVIDER_BUILDS.map((b) => b.onnxruntime).join(", ")}): pin onnxruntime-node to that version, or use onnxruntime-node's own install script where nuget.org is reachable (README, "GPU hosts")`;
}

const SETUP = "run `photo-edit-bot setup cuda` (npm run setup:cuda)";

/** The libraries the provider loads, in the order that makes the first failure the most telling. */
function requiredLibraries(b: CudaProviderBuild): { soname: string; what: string; older?: string }[] {
  const cudaHint = `install the CUDA ${b.cuda} runtime libraries (cudart, cuBLAS, cuRAND; e.g. the nvidia/cuda:${b.cuda}.0.0-runtime image, or apt install cuda-libraries-${b.cuda}-0) and put their folder on LD_LIBRARY_PATH`;
  return [
    {
      soname: "libcuda.so.1",
      what: "the NVIDIA driver library libcuda.so.1 is not loadable: no NVIDIA GPU driver here (on Docker: run with --gpus all and the NVIDIA container toolkit)",
    },
    { soname: `libcudart.so.${b.cuda}`, what: cudaHint, older: `libcudart.so.${b.cuda - 1}` },
    { soname: `libcublas.so.${b.cuda}`, what: cudaHint, older: `libcublas.so.${b.cuda - 1}` },
    { soname: `libcublasLt.so.${b.cuda}`, what: cudaHint },
    { soname: "libcurand.so.10", what: cudaHint },
    {
      soname: `libcudnn.so.${b.cudnn}`,
      what: `install cuDNN ${b.cudnn} for CUDA ${b.cuda} (e.g. the nvidia/cuda:${b.cuda}.0.0-cudnn-runtime image, or apt install libcudnn${b.cudnn}-cuda-${b.cuda}) and put its folder on LD_LIBRARY_PATH`,
      older: `libcudnn.so.${b.cudnn - 1}`,
    },
  ];
}

/**
 * The onnxruntime version a provider library was built from, as far as its bytes tell: true when
 * `expected` is among them (onnxruntime embeds its version string), else the 1.x.y strings it holds.
 */
export function providerBuiltFor(file: string, expected: string): true | string[] {
  const bytes = readFileSync(file);
  if (bytes.indexOf(Buffer.from(`\0${expected}\0`)) >= 0) return true;
  const found = new Set<string>();
  for (const m of bytes.toString("latin1").matchAll(/\0(1\.(\d+)\.\d+)\0/g))
    if (Number(m[2]) >= 10) found.add(m[1] as string);
  return [...found];
}

interface Stamp {
  onnxruntime: string;
  package: string;
  version: string;
  size: number;
  mtimeMs: number;
}

/** The provider's onnxruntime version: from the stamp `setup cuda` wrote (if it still describes the file), else from its bytes. */
function providerVersion(host: CudaHost, expected: string): { ok: true } | { ok: false; found: string } {
  const lib = join(host.bindingDir, "libonnxruntime_providers_cuda.so");
  const st = statSync(lib);
  try {
    const stamp = JSON.parse(readFileSync(join(host.bindingDir, PROVIDER_STAMP), "utf8")) as Stamp;
    if (stamp.size === st.size && stamp.mtimeMs === st.mtimeMs) {
      return stamp.onnxruntime === expected ? { ok: true } : { ok: false, found: stamp.onnxruntime };
    }
  } catch {
    // No stamp (installed by hand or by onnxruntime-node's script): read the library itself.
  }
  const v = providerBuiltFor(lib, expected);
  return v === true ? { ok: true } : { ok: false, found: v.length ? v.join(" or ") : "an unknown version" };
}

/**
 * Everything the CUDA provider needs, checked in order; stops at the first failure (later checks would
 * only repeat it). `provider: false` checks the machine alone (before the provider is installed).
 */
export async function checkCuda(host: CudaHost, opts: { provider?: boolean } = {}): Promise<CudaReport> {
  const checks: CudaReport["checks"] = [];
  const fail = (name: string, problem: string, extra: Partial<CudaReport> = {}): CudaReport => {
    checks.push({ name, ok: false, detail: problem });
    return { ok: false, problem, checks, ...extra };
  };
  const pass = (name: string, detail: string) => checks.push({ name, ok: true, detail });

  const build = providerBuild(host);
  if (typeof build === "string") return fail("onnxruntime", build);
  pass("onnxruntime", `onnxruntime-node ${build.onnxruntime}: provider ${build.package}@${build.version}`);

  if (opts.provider !== false) {
    const missing = PROVIDER_LIBRARIES.filter((l) => !existsSync(join(host.bindingDir, l)));
    if (missing.length > 0) {
      return fail(
        "provider",
        `the CUDA provider is not installed (${missing.join(", ")} not in ${host.bindingDir}): ${SETUP}`,
        { build },
      );
    }
    const v = providerVersion(host, build.onnxruntime);
    if (!v.ok) {
      return fail(
        "provider",
        `the CUDA provider in ${host.bindingDir} was built for onnxruntime ${v.found}, but onnxruntime-node is ${build.onnxruntime}: ${SETUP} again`,
        { build },
      );
    }
    pass("provider", `built for onnxruntime ${build.onnxruntime}, in ${host.bindingDir}`);
  }

  const libs = requiredLibraries(build);
  const loaded = await host.loadLibraries([
    ...libs.map((l) => l.soname),
    ...libs.flatMap((l) => l.older ?? []),
  ]);
  for (const lib of libs) {
    const err = loaded[lib.soname];
    if (err === null) {
      pass(lib.soname, "loads");
      continue;
    }
    const older = lib.older && loaded[lib.older] === null ? ` (${lib.older} is here: too old)` : "";
    const what = lib.soname === "libcuda.so.1" ? lib.what : `${lib.soname} is missing${older}: ${lib.what}`;
    return fail(lib.soname, what, { build });
  }

  const gpus = await host.gpus();
  if (typeof gpus === "string") return fail("gpu", `nvidia-smi failed: ${gpus}`, { build });
  if (gpus !== null) {
    if (gpus.length === 0) return fail("gpu", "nvidia-smi lists no GPU on this machine", { build });
    const old = gpus.find((g) => Number.parseInt(g.driver, 10) < build.minDriver);
    if (old) {
      return fail(
        "gpu",
        `the NVIDIA driver ${old.driver} is too old for CUDA ${build.cuda} (needs ${build.minDriver} or newer): update the driver`,
        { build, gpus },
      );
    }
    pass(
      "gpu",
      gpus.map((g) => `${g.name} (${(g.memoryMiB / 1024).toFixed(0)} GiB, driver ${g.driver})`).join("; "),
    );
  } else pass("gpu", "no nvidia-smi here: the GPU is checked when onnxruntime loads the provider");
  return { ok: true, problem: null, checks, build, ...(gpus ? { gpus } : {}) };
}

/**
 * Installs the provider for the installed onnxruntime-node next to its binding: from `from` (a tarball
 * of the package) or fetched with `npm pack` (the npm registry, through the user's npm config). The
 * libraries are checked to be built for that onnxruntime before they replace anything, written under a
 * temporary name and renamed, and a stamp records which build they are.
 */
export async function installCudaProvider(
  host: CudaHost,
  opts: { from?: string; log?: (line: string) => void } = {},
): Promise<CudaProviderBuild> {
  const log = opts.log ?? (() => {});
  const build = providerBuild(host);
  if (typeof build === "string") throw new CudaSetupError(build);
  const work = mkdtempSync(join(tmpdir(), "cuda-provider-"));
  try {
    let tarball = opts.from;
    if (!tarball) {
      log(`fetching ${build.package}@${build.version} from the npm registry (≈ 180 MB)…`);
      tarball = await host.npmPack(`${build.package}@${build.version}`, work);
    }
    if (!existsSync(tarball)) throw new CudaSetupError(`${tarball} does not exist`);
    const inside = PROVIDER_LIBRARIES.map((l) => `${build.dir}/${l}`);
    try {
      await run("tar", ["-xzf", tarball, "-C", work, ...inside]);
    } catch (e) {
      throw new CudaSetupError(
        `${tarball} does not hold ${inside.join(" and ")}: ${firstLine((e as { stderr?: string }).stderr || (e as Error).message)}`,
      );
    }
    const provider = join(work, build.dir, "libonnxruntime_providers_cuda.so");
    const v = providerBuiltFor(provider, build.onnxruntime);
    if (v !== true) {
      throw new CudaSetupError(
        `the provider in ${tarball} was built for onnxruntime ${v.join(" or ") || "an unknown version"}, not ${build.onnxruntime}`,
      );
    }
    for (const lib of PROVIDER_LIBRARIES) {
      const target = join(host.bindingDir, lib);
      copyFileSync(join(work, build.dir, lib), `${target}.tmp-${process.pid}`);
      renameSync(`${target}.tmp-${process.pid}`, target);
    }
    const st = statSync(join(host.bindingDir, "libonnxruntime_providers_cuda.so"));
    const stamp: Stamp = {
      onnxruntime: build.onnxruntime,
      package: build.package,
      version: build.version,
      size: st.size,
      mtimeMs: st.mtimeMs,
    };
    writeFileSync(join(host.bindingDir, PROVIDER_STAMP), `${JSON.stringify(stamp, null, 2)}\n`);
    log(
      `installed ${PROVIDER_LIBRARIES.join(" and ")} (onnxruntime ${build.onnxruntime}) in ${host.bindingDir}`,
    );
    return build;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** A setup step that cannot go on: one line, shown as is. */
export class CudaSetupError extends Error {
  override name = "CudaSetupError";
}

function firstLine(s: string): string {
  return s.trim().split("\n")[0] ?? s;
}

/**
 * dlopen in a child process (a library's constructors, or a crash, stay out of this one): Node's
 * process.dlopen loads any shared library and then fails with "did not self-register" when it is not a
 * Node add-on, which means the library and everything it needs were found.
 */
const LOAD_PROBE = `const r={};for(const n of JSON.parse(process.argv[1])){try{process.dlopen({exports:{}},n);r[n]=null}catch(e){const m=String(e&&e.message||e);r[n]=/self-register/.test(m)?null:m.split("\\n")[0]}}process.stdout.write(JSON.stringify(r))`;

export async function loadLibrariesInChild(names: readonly string[]): Promise<Record<string, string | null>> {
  const { stdout } = await run(process.execPath, ["-e", LOAD_PROBE, JSON.stringify(names)], {
    timeout: 60_000,
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout) as Record<string, string | null>;
}

/** nvidia-smi's GPU list; null without nvidia-smi; its message when it fails (no driver, no device). */
export async function nvidiaSmiGpus(command = "nvidia-smi"): Promise<GpuInfo[] | string | null> {
  try {
    const { stdout } = await run(
      command,
      ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
      { timeout: 30_000 },
    );
    return stdout
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l.length > 0)
      .map((l) => {
        const [name = "", driver = "", mem = "0"] = l.split(",").map((s) => s.trim());
        return { name, driver, memoryMiB: Number(mem) };
      });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (err.code === "ENOENT") return null;
    return firstLine(err.stdout || err.stderr || err.message);
  }
}

let installed: { version: string; bindingDir: string } | undefined;
/** onnxruntime-node's binding folder for this platform, and its version. */
export function onnxruntimeNode(): { version: string; bindingDir: string } {
  if (!installed) {
    const req = createRequire(import.meta.url);
    const pkgFile = req.resolve("onnxruntime-node/package.json");
    const version = (JSON.parse(readFileSync(pkgFile, "utf8")) as { version: string }).version;
    installed = {
      version,
      bindingDir: join(dirname(pkgFile), "bin", "napi-v6", process.platform, process.arch),
    };
  }
  return installed;
}

export function systemCudaHost(): CudaHost {
  const ort = onnxruntimeNode();
  return {
    platform: `${process.platform}/${process.arch}`,
    onnxruntimeVersion: ort.version,
    bindingDir: ort.bindingDir,
    loadLibraries: loadLibrariesInChild,
    gpus: () => nvidiaSmiGpus(),
    async npmPack(spec, dir) {
      const { stdout } = await run("npm", ["pack", "--silent", spec, "--pack-destination", dir], {
        timeout: 600_000,
        maxBuffer: 1 << 20,
      }).catch((e: { stderr?: string; message: string }) => {
        throw new CudaSetupError(`npm pack ${spec} failed: ${firstLine(e.stderr || e.message)}`);
      });
      const file = stdout.trim().split("\n").at(-1) as string;
      return join(dir, file);
    },
  };
}
