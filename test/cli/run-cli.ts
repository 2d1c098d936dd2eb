import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

export const CLI = path.resolve("src/cli/index.ts");
const TSX_CLI = path.resolve("node_modules/tsx/dist/cli.mjs");
const TSX_LOADER = path.resolve("node_modules/tsx/dist/loader.mjs");

/**
 * Spawns the CLI with JSON logs at info level on stderr, in its own process group. `tsxCli` runs it as
 * `npm start` does (tsx's CLI, which relays signals to a child node process); by default a single
 * node process with tsx's loader.
 */
export function spawnCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  { tsxCli = false } = {},
): ChildProcessWithoutNullStreams {
  const command = tsxCli ? [TSX_CLI] : ["--import", pathToFileURL(TSX_LOADER).href];
  return spawn(process.execPath, [...command, CLI, ...args], {
    env: { ...process.env, LOG_LEVEL: "info", LOG_PRETTY: "false", ...env },
    // Outside the project, so that a developer's .env does not leak into the tests.
    cwd: tmpdir(),
    detached: true,
  });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion. */
export async function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = spawnCli(args, env);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk;
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  return { code, stdout, stderr };
}

/** Resolves with the first JSON log line on the child's stderr whose msg matches. */
export function waitForLog(
  child: ChildProcessWithoutNullStreams,
  msg: string,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    const onData = (chunk: Buffer) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        const entry = line.startsWith("{") ? (JSON.parse(line) as Record<string, unknown>) : undefined;
        if (entry?.msg === msg) {
          child.stderr.off("data", onData);
          resolve(entry);
        }
      }
    };
    child.stderr.on("data", onData);
    child.once("exit", (code) => reject(new Error(`CLI exited (${code}) before logging "${msg}"`)));
  });
}
