import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { build } from "esbuild";
import { afterAll, describe, expect, it } from "vitest";

const run = promisify(execFile);

// GPU hosts get the CLI as one ESM file (README "GPU hosts"); pino transports, dynamic requires of
// Node built-ins and similar break only there. Built inside node_modules so the bundle still finds
// the external native packages.
const cacheDir = path.resolve("node_modules/.cache");
mkdirSync(cacheDir, { recursive: true });
const outDir = mkdtempSync(path.join(cacheDir, "cli-bundle-"));
afterAll(() => rmSync(outDir, { recursive: true, force: true }));

describe("single-file ESM bundle of the CLI", () => {
  it("builds with the documented esbuild flags and runs", async () => {
    const outfile = path.join(outDir, "cli.mjs");
    const result = await build({
      entryPoints: ["src/cli/index.ts"],
      bundle: true,
      platform: "node",
      format: "esm",
      external: ["onnxruntime-node", "sharp"],
      outfile,
      logLevel: "silent",
    });
    expect(result.errors).toEqual([]);

    const help = await run(process.execPath, [outfile, "--help"]);
    expect(help.stdout).toContain("Usage: photo-edit-bot [options] [command]");
    const failure = await run(process.execPath, [outfile, "start", "--nope"]).catch((error) => error);
    expect(failure).toMatchObject({ code: 1, stderr: "error: unknown option '--nope'\n" });
  });
});
