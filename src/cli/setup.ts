import { Command } from "commander";
import {
  type CudaHost,
  type CudaReport,
  CudaSetupError,
  checkCuda,
  installCudaProvider,
  systemCudaHost,
} from "../engine/runtime/cuda.js";
import { buildCudaOptionsAddon, cudaOptionsText } from "../engine/runtime/cuda-options.js";
import { UserFacingError } from "../errors.js";

/**
 * `setup cuda`: puts onnxruntime's CUDA provider (from the npm registry) next to onnxruntime-node's
 * binding and checks that it can run here; one line says what is missing otherwise (exit 1).
 * `--check` only checks; `--no-check` only installs (a Docker build, which has no GPU); `--from` takes a
 * tarball already downloaded (`npm pack com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9`). Installing also
 * builds the add-on that passes the provider its options (runtime/cuda-options.ts).
 */
export function setupCommand(
  host: () => CudaHost = systemCudaHost,
  buildAddon: (dir: string) => Promise<string> = buildCudaOptionsAddon,
): Command {
  const setup = new Command("setup").description("install optional parts of the engine (setup cuda)");
  setup
    .command("cuda")
    .description(
      "install onnxruntime's CUDA provider from the npm registry next to onnxruntime-node and check CUDA 13, cuDNN 9 and the GPU",
    )
    .option("--check", "only check what is installed (nothing is downloaded)", false)
    .option("--no-check", "only install (e.g. in a Docker build, where no GPU is visible)")
    .option("--from <tarball>", "install from this package tarball instead of fetching it")
    .action(async (o: { check: boolean; from?: string }, cmd: Command) => {
      const out = (line: string) => process.stdout.write(`${line}\n`);
      const h = host();
      // --check and --no-check share one flag: commander gives false for --no-check, and true for --check
      // only when it was typed (the default stays false so that plain `setup cuda` installs).
      const checkOnly = cmd.getOptionValueSource("check") === "cli" && o.check;
      const installOnly = cmd.getOptionValueSource("check") === "cli" && !o.check;
      try {
        if (!checkOnly) await installCudaProvider(h, { from: o.from, log: out });
      } catch (e) {
        if (e instanceof CudaSetupError) throw new UserFacingError(`setup cuda: ${e.message}`);
        throw e;
      }
      if (!checkOnly) {
        // Without the add-on the provider still runs, at onnxruntime's defaults: a warning, not a failure.
        await buildAddon(h.bindingDir).then(
          (file) =>
            out(
              `built ${file} (hands the provider ENGINE_CUDA_OPTIONS; defaults: ${cudaOptionsText({}) || "onnxruntime's"})`,
            ),
          (e: Error) =>
            out(
              `warning: the CUDA options add-on was not built (${e.message}): ENGINE_CUDA_OPTIONS cannot reach the provider, which runs with onnxruntime's default options`,
            ),
        );
      }
      if (installOnly) return;
      const report = await checkCuda(h);
      printReport(report, out);
      if (!report.ok) throw new UserFacingError(`setup cuda: ${report.problem}`);
      out("the CUDA provider is ready: ENGINE_DEVICE=cuda (or auto) uses it");
    });
  return setup;
}

function printReport(r: CudaReport, out: (line: string) => void): void {
  for (const c of r.checks) out(`${c.ok ? "ok  " : "FAIL"} ${c.name.padEnd(18)} ${c.detail}`);
}
