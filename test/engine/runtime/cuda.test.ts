import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { setupCommand } from "../../../src/cli/setup.js";
import {
  CUDA_PROVIDER_BUILDS,
  type CudaHost,
  checkCuda,
  type GpuInfo,
  installCudaProvider,
  loadLibrariesInChild,
  nvidiaSmiGpus,
  PROVIDER_STAMP,
} from "../../../src/engine/runtime/cuda.js";
import { CUDA_OPTIONS_ADDON } from "../../../src/engine/runtime/cuda-options.js";
import { setCudaHostForTests } from "../../../src/engine/runtime/device.js";
import { DeviceUnavailableError, resolveDevice } from "../../../src/engine/runtime/index.js";
import { UserFacingError } from "../../../src/errors.js";

const root = mkdtempSync(join(tmpdir(), "cuda-setup-test-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

const BUILD = CUDA_PROVIDER_BUILDS[0] as (typeof CUDA_PROVIDER_BUILDS)[number];
const LIBS = [
  "libcuda.so.1",
  "libcudart.so.13",
  "libcublas.so.13",
  "libcublasLt.so.13",
  "libcurand.so.10",
  "libcudnn.so.9",
];
const H200: GpuInfo = { name: "NVIDIA H200", driver: "580.95.05", memoryMiB: 143771 };

/** Stand-in provider bytes: onnxruntime embeds its version as a NUL-terminated string. */
const fakeProvider = (version: string) => Buffer.from(`\x7fELF…padding\0${version}\0more bytes`);

/** A machine where everything is in place unless `over` says otherwise. */
function fakeHost(over: Partial<CudaHost> & { failing?: Record<string, string> } = {}): CudaHost {
  const bindingDir = join(root, `binding-${n++}`);
  mkdirSync(bindingDir, { recursive: true });
  const { failing = {}, ...rest } = over;
  return {
    platform: "linux/x64",
    onnxruntimeVersion: BUILD.onnxruntime,
    bindingDir,
    loadLibraries: async (names) =>
      Object.fromEntries(
        names.map((l) => [
          l,
          l in failing
            ? (failing[l] as string)
            : LIBS.includes(l)
              ? null
              : `${l}: cannot open shared object file: No such file or directory`,
        ]),
      ),
    gpus: async () => [H200],
    npmPack: async () => {
      throw new Error("no registry in this test");
    },
    ...rest,
  };
}

function installFake(host: CudaHost, version = BUILD.onnxruntime): void {
  writeFileSync(join(host.bindingDir, "libonnxruntime_providers_shared.so"), "shared");
  writeFileSync(join(host.bindingDir, "libonnxruntime_providers_cuda.so"), fakeProvider(version));
}

/** A package tarball laid out like the npm one, holding `version`'s provider (or only the shared lib). */
function fakeTarball(version: string, { withProvider = true } = {}): string {
  const dir = join(root, `pkg-${n++}`);
  const lib = join(dir, BUILD.dir);
  mkdirSync(lib, { recursive: true });
  writeFileSync(join(lib, "libonnxruntime_providers_shared.so"), "shared");
  if (withProvider) writeFileSync(join(lib, "libonnxruntime_providers_cuda.so"), fakeProvider(version));
  const tgz = join(root, `pkg-${n++}.tgz`);
  execFileSync("tar", ["-czf", tgz, "-C", dir, "package"]);
  return tgz;
}

describe("CUDA provider checks (fake machines)", () => {
  it("passes when the provider matches onnxruntime-node and CUDA 13, cuDNN 9, a driver and a GPU are there", async () => {
    const host = fakeHost();
    installFake(host);
    const r = await checkCuda(host);
    expect(r).toMatchObject({ ok: true, problem: null, gpus: [H200] });
    expect(r.checks.map((c) => c.name)).toEqual(["onnxruntime", "provider", ...LIBS, "gpu"]);
  });

  it("names an onnxruntime-node without a provider build on npm, and another platform", async () => {
    const r = await checkCuda(fakeHost({ onnxruntimeVersion: "1.30.0" }));
    expect(r.problem).toMatch(
      /^onnxruntime-node 1\.30\.0 has no CUDA provider build on the npm registry \(there is one for 1\.29\.0\): pin onnxruntime-node to that version/,
    );
    expect((await checkCuda(fakeHost({ platform: "darwin/arm64" }))).problem).toBe(
      "the CUDA provider build on the npm registry is for Linux x64; this machine is darwin/arm64",
    );
  });

  it("says the provider is not installed, and how to install it", async () => {
    const host = fakeHost();
    const r = await checkCuda(host);
    expect(r.problem).toBe(
      `the CUDA provider is not installed (libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so not in ${host.bindingDir}): run \`photo-edit-bot setup cuda\` (npm run setup:cuda)`,
    );
  });

  it("refuses a provider built for another onnxruntime (from its bytes, or from a stamp that still describes it)", async () => {
    const host = fakeHost();
    installFake(host, "1.28.1");
    expect((await checkCuda(host)).problem).toBe(
      `the CUDA provider in ${host.bindingDir} was built for onnxruntime 1.28.1, but onnxruntime-node is 1.29.0: run \`photo-edit-bot setup cuda\` (npm run setup:cuda) again`,
    );
    // setup's stamp is trusted only while size and mtime match: a replaced file is read again.
    const tgz = fakeTarball("1.29.0");
    await installCudaProvider(host, { from: tgz });
    expect((await checkCuda(host)).ok).toBe(true);
    const lib = join(host.bindingDir, "libonnxruntime_providers_cuda.so");
    writeFileSync(lib, fakeProvider("1.27.0"));
    utimesSync(lib, new Date(), new Date(Date.now() + 5000));
    expect((await checkCuda(host)).problem).toMatch(
      /built for onnxruntime 1\.27\.0, but onnxruntime-node is 1\.29\.0/,
    );
  });

  it("names the missing library and what to install: no driver, CUDA 12 instead of 13, cuDNN 8 instead of 9", async () => {
    const missing = (l: string) => ({
      [l]: `${l}: cannot open shared object file: No such file or directory`,
    });
    const cases: [Record<string, string>, RegExp][] = [
      [
        missing("libcuda.so.1"),
        /^the NVIDIA driver library libcuda\.so\.1 is not loadable: no NVIDIA GPU driver here \(on Docker: run with --gpus all/,
      ],
      [missing("libcublas.so.13"), /^libcublas\.so\.13 is missing: install the CUDA 13 runtime libraries/],
      [
        missing("libcudnn.so.9"),
        /^libcudnn\.so\.9 is missing: install cuDNN 9 for CUDA 13 \(e\.g\. the nvidia\/cuda:13\.0\.0-cudnn-runtime image, or apt install libcudnn9-cuda-13\)/,
      ],
    ];
    for (const [failing, message] of cases) {
      const host = fakeHost({ failing });
      installFake(host);
      const r = await checkCuda(host);
      expect(r.ok).toBe(false);
      expect(r.problem).toMatch(message);
      expect(r.checks.at(-1)?.ok).toBe(false);
    }
    // An older major next to it is named as too old.
    const older = fakeHost({
      failing: missing("libcudnn.so.9"),
      loadLibraries: async (names) =>
        Object.fromEntries(names.map((l) => [l, l === "libcudnn.so.9" ? "not found" : null])),
    });
    installFake(older);
    expect((await checkCuda(older)).problem).toMatch(
      /^libcudnn\.so\.9 is missing \(libcudnn\.so\.8 is here: too old\)/,
    );
  });

  it("names no GPU, a failing nvidia-smi and a driver too old for CUDA 13", async () => {
    const cases: [CudaHost["gpus"], string][] = [
      [async () => [], "nvidia-smi lists no GPU on this machine"],
      [
        async () => "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
      ],
      [
        async () => [{ ...H200, driver: "550.54.15" }],
        "the NVIDIA driver 550.54.15 is too old for CUDA 13 (needs 580 or newer): update the driver",
      ],
    ];
    for (const [gpus, problem] of cases) {
      const host = fakeHost({ gpus });
      installFake(host);
      expect((await checkCuda(host)).problem).toBe(problem);
    }
    // Without nvidia-smi the session probe decides: the machine check passes.
    const host = fakeHost({ gpus: async () => null });
    installFake(host);
    expect((await checkCuda(host)).ok).toBe(true);
  });
});

describe("installing the provider", () => {
  it("copies the two libraries from the package next to the binding and stamps them", async () => {
    const host = fakeHost({ npmPack: vi.fn(async () => fakeTarball("1.29.0")) });
    const lines: string[] = [];
    await installCudaProvider(host, { log: (l) => lines.push(l) });
    expect(host.npmPack).toHaveBeenCalledWith(`${BUILD.package}@${BUILD.version}`, expect.any(String));
    expect(readFileSync(join(host.bindingDir, "libonnxruntime_providers_shared.so"), "utf8")).toBe("shared");
    expect(JSON.parse(readFileSync(join(host.bindingDir, PROVIDER_STAMP), "utf8"))).toMatchObject({
      onnxruntime: "1.29.0",
      package: BUILD.package,
      version: BUILD.version,
    });
    expect(lines.at(-1)).toMatch(
      /^installed libonnxruntime_providers_shared\.so and libonnxruntime_providers_cuda\.so \(onnxruntime 1\.29\.0\)/,
    );
  });

  it("refuses a package of another onnxruntime or without the provider, replacing nothing", async () => {
    const host = fakeHost();
    await expect(installCudaProvider(host, { from: fakeTarball("1.22.0") })).rejects.toThrow(
      /was built for onnxruntime 1\.22\.0, not 1\.29\.0$/,
    );
    await expect(
      installCudaProvider(host, { from: fakeTarball("1.29.0", { withProvider: false }) }),
    ).rejects.toThrow(
      /does not hold package\/Plugins\/Linux\/x64\/libonnxruntime_providers_shared\.so and package\/Plugins\/Linux\/x64\/libonnxruntime_providers_cuda\.so/,
    );
    expect(existsSync(join(host.bindingDir, "libonnxruntime_providers_cuda.so"))).toBe(false);
    await expect(installCudaProvider(fakeHost({ onnxruntimeVersion: "1.30.0" }))).rejects.toThrow(
      /^onnxruntime-node 1\.30\.0 has no CUDA provider build/,
    );
  });
});

describe("`setup cuda`", () => {
  const run = async (host: CudaHost, args: string[], buildAddon?: (dir: string) => Promise<string>) => {
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((s) => {
      out.push(String(s));
      return true;
    });
    try {
      await setupCommand(() => host, buildAddon).parseAsync(["cuda", ...args], { from: "user" });
      return { out: out.join(""), error: undefined };
    } catch (error) {
      return { out: out.join(""), error: error as Error };
    } finally {
      spy.mockRestore();
    }
  };

  it("installs, checks, and fails with one line naming what is missing", async () => {
    const host = fakeHost({ failing: { "libcudnn.so.9": "libcudnn.so.9: cannot open shared object file" } });
    const r = await run(host, ["--from", fakeTarball("1.29.0")]);
    expect(r.error).toBeInstanceOf(UserFacingError);
    expect(r.error?.message).toMatch(/^setup cuda: libcudnn\.so\.9 is missing: install cuDNN 9 for CUDA 13/);
    expect(r.error?.message).not.toContain("\n");
    expect(r.out).toContain("ok   provider");
    expect(r.out).toMatch(/FAIL libcudnn\.so\.9/);
  });

  it("--check downloads nothing; --no-check only installs; a good machine is ready", async () => {
    const host = fakeHost({ npmPack: vi.fn(async () => fakeTarball("1.29.0")) });
    const checked = await run(host, ["--check"]);
    expect(host.npmPack).not.toHaveBeenCalled();
    expect(checked.error?.message).toMatch(/^setup cuda: the CUDA provider is not installed/);
    const installed = await run(fakeHost({ gpus: async () => [], npmPack: host.npmPack }), ["--no-check"]);
    expect(installed.error).toBeUndefined();
    expect(installed.out).not.toContain("FAIL");
    const ready = await run(host, []);
    expect(ready.error).toBeUndefined();
    expect(ready.out).toMatch(/ok {3}gpu {16}NVIDIA H200 \(140 GiB, driver 580\.95\.05\)/);
    expect(ready.out).toContain("the CUDA provider is ready: ENGINE_DEVICE=cuda (or auto) uses it");
    // The options add-on, compiled with this machine's cc beside the provider.
    expect(ready.out).toContain(`built ${join(host.bindingDir, CUDA_OPTIONS_ADDON)}`);
    expect(existsSync(join(host.bindingDir, CUDA_OPTIONS_ADDON))).toBe(true);
    expect(checked.out).not.toContain("built");
  });

  it("without a compiler the provider is still installed and ready, with a warning that says what is lost", async () => {
    const noCompiler = async () => {
      throw new Error("no C compiler (cc) on this machine: install gcc (apt install gcc)");
    };
    const r = await run(fakeHost(), ["--from", fakeTarball("1.29.0")], noCompiler);
    expect(r.error).toBeUndefined();
    expect(r.out).toContain(
      "warning: the CUDA options add-on was not built (no C compiler (cc) on this machine: install gcc (apt install gcc)): ENGINE_CUDA_OPTIONS cannot reach the provider, which runs with onnxruntime's default options",
    );
    expect(r.out).toContain("the CUDA provider is ready");
  });
});

describe("the machine probes (real child processes)", () => {
  it("loads libraries in a child process and reports the loader's error for a missing one", async () => {
    const r = await loadLibrariesInChild(["libc.so.6", "libphoto-edit-bot-missing.so.7"]);
    expect(r["libc.so.6"]).toBeNull();
    expect(r["libphoto-edit-bot-missing.so.7"]).toMatch(
      /libphoto-edit-bot-missing\.so\.7: cannot open shared object file/,
    );
  });

  it("reads nvidia-smi's GPU list, its failure, and its absence", async () => {
    const dir = mkdtempSync(join(root, "smi-"));
    const script = (name: string, body: string) => {
      const f = join(dir, name);
      writeFileSync(f, `#!/bin/sh\n${body}\n`);
      chmodSync(f, 0o755);
      return f;
    };
    expect(await nvidiaSmiGpus(script("ok", 'echo "NVIDIA H200, 580.95.05, 143771"'))).toEqual([H200]);
    expect(
      await nvidiaSmiGpus(
        script(
          "broken",
          'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
        ),
      ),
    ).toBe("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.");
    expect(await nvidiaSmiGpus(join(dir, "absent"))).toBeNull();
  });
});

describe("ENGINE_DEVICE=cuda on a machine that cannot run it", () => {
  afterEach(() => setCudaHostForTests(null));

  it("fails with the check's one line; auto skips cuda", async () => {
    const host = fakeHost();
    installFake(host, "1.28.0");
    setCudaHostForTests(() => host);
    const err = await resolveDevice("cuda").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceUnavailableError);
    expect((err as Error).message).toBe(
      `device "cuda" is unavailable on this machine: the CUDA provider in ${host.bindingDir} was built for onnxruntime 1.28.0, but onnxruntime-node is 1.29.0: run \`photo-edit-bot setup cuda\` (npm run setup:cuda) again`,
    );
    expect(await resolveDevice("auto")).not.toBe("cuda");
  });
});
