// This CLI running one of its service commands in a child process: `start` runs `engine` so (its
// compiles hold an event loop for seconds), and the chaos benchmark runs engines and the bot so, to
// SIGKILL them. The child says when it is ready over an IPC channel, and stops by itself when that
// channel closes (its parent died). A dev checkout (tsx), dist/ and the single-file bundle work alike.
import { type ChildProcess, spawn } from "node:child_process";
import type { Config } from "./config.js";
import { UserFacingError } from "./errors.js";
import { type RunOptions, runServices, type Service } from "./services.js";

/** What a child sends its parent once its services run. */
const READY = "services-ready";

/** This CLI's own command line with `args`: this node, its flags (tsx's loader) and its entry script. */
export function cliCommandLine(...args: string[]): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1] ?? "", ...args];
}

export interface CliProcess {
  child: ChildProcess;
  /** Settles when the process has exited: "exit code N" or "signal S". */
  exited: Promise<string>;
}

/**
 * Spawns `command` (a service command of this CLI) with `env` over this process's environment, in its
 * own process group, and resolves once it is ready. Throws a UserFacingError naming `what` if it exits
 * first (or is stopped through `signal`, which SIGTERMs it).
 */
export async function spawnCliProcess(
  what: string,
  command: readonly string[],
  env: NodeJS.ProcessEnv,
  options: { signal?: AbortSignal; cwd?: string } = {},
): Promise<CliProcess> {
  const [file, ...args] = command;
  const child = spawn(file ?? process.execPath, args, {
    env: { ...process.env, ...env },
    ...(options.cwd ? { cwd: options.cwd } : {}),
    // Its own process group: a terminal's Ctrl-C reaches only us, and we stop the child in order.
    detached: true,
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<string>((resolve) =>
    child.once("exit", (code, signal) => resolve(signal ? `signal ${signal}` : `exit code ${code}`)),
  );
  const ready = new Promise<void>((resolve) =>
    child.on("message", (message) => {
      if (message === READY) resolve();
    }),
  );
  // Told to stop while the child starts (a model download): it stops too, and says so by exiting.
  const abandon = () => child.kill("SIGTERM");
  options.signal?.addEventListener("abort", abandon, { once: true });
  const outcome = await Promise.race([ready.then(() => undefined), exited]);
  options.signal?.removeEventListener("abort", abandon);
  if (outcome !== undefined) {
    throw new UserFacingError(
      `the ${what} process stopped before it was ready (${outcome}); its log says why`,
    );
  }
  return { child, exited };
}

/** SIGTERM (a clean stop: an engine finishes or hands back its job), then SIGKILL after `timeoutMs`. */
export async function stopCliProcess({ child, exited }: CliProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  await exited;
  clearTimeout(timer);
}

/**
 * runServices in a process that may be a spawnCliProcess child: tells the parent when the services
 * run, and stops them (SIGTERM to itself) when the parent goes away. Run alone, it is runServices.
 */
export async function runServicesAsChild(
  config: Config,
  services: Service[],
  options: Omit<RunOptions, "onReady"> = {},
): Promise<void> {
  const parent = process.send ? process : undefined;
  const orphaned = () => process.kill(process.pid, "SIGTERM");
  parent?.once("disconnect", orphaned);
  try {
    await runServices(config, services, { ...options, onReady: () => parent?.send?.(READY) });
  } finally {
    // The open channel would keep this process alive.
    parent?.off("disconnect", orphaned);
    parent?.disconnect?.();
  }
}
