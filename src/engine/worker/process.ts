// `start` runs the engine in a process of its own. Building and compiling ONNX sessions, and much of a
// training step, hold the event loop of the process they run in for seconds; a chat bot in that process
// would miss Discord's 3-second window to acknowledge a command ("The application did not respond").
// The child is this same CLI running `engine` against the same Redis, so a dev checkout (tsx), dist/
// and the single-file GPU bundle all work alike.
import { type ChildProcess, spawn } from "node:child_process";
import { UserFacingError } from "../../errors.js";
import type { RunningService, Service } from "../../services.js";

/** What the `engine` command sends its parent once it takes jobs. */
export const ENGINE_READY = "engine-ready";

export interface EngineProcessOptions {
  /** The command that runs `engine` (default: engineCommandLine()). */
  command?: readonly string[];
  /** How long a stop waits for the engine to finish or hand back its job before killing it. */
  stopTimeoutMs?: number;
}

/** This CLI's own command line running `engine`: this node, its flags (tsx's loader) and entry script. */
export function engineCommandLine(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1] ?? "", "engine"];
}

export interface EngineProcess {
  child: ChildProcess;
  /** Settles when the process has exited: "exit code N" or "signal S". */
  exited: Promise<string>;
}

/**
 * Spawns `command` (an `engine` command line) with `env` over this process's environment, in its own
 * process group, and resolves once it takes jobs. Throws a UserFacingError if it exits first (or is
 * stopped through `signal`, which SIGTERMs it).
 */
export async function spawnEngineProcess(
  command: readonly string[],
  env: NodeJS.ProcessEnv,
  options: { signal?: AbortSignal; cwd?: string } = {},
): Promise<EngineProcess> {
  const [file, ...args] = command;
  const child = spawn(file ?? process.execPath, args, {
    env: { ...process.env, ...env },
    ...(options.cwd ? { cwd: options.cwd } : {}),
    // Its own process group: a terminal's Ctrl-C reaches only us, and we stop the engine in order.
    // The IPC channel carries "ready"; when it closes (we died), the engine stops by itself.
    detached: true,
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<string>((resolve) =>
    child.once("exit", (code, signal) => resolve(signal ? `signal ${signal}` : `exit code ${code}`)),
  );
  const ready = new Promise<void>((resolve) =>
    child.on("message", (message) => {
      if (message === ENGINE_READY) resolve();
    }),
  );
  // Told to stop while the engine starts (a model download): it stops too, and says so by exiting.
  const abandon = () => child.kill("SIGTERM");
  options.signal?.addEventListener("abort", abandon, { once: true });
  const outcome = await Promise.race([ready.then(() => undefined), exited]);
  options.signal?.removeEventListener("abort", abandon);
  if (outcome !== undefined) {
    throw new UserFacingError(
      `the engine process stopped before it was ready (${outcome}); its log says why`,
    );
  }
  return { child, exited };
}

export function engineProcessService(options: EngineProcessOptions = {}): Service {
  return {
    name: "engine",
    async start({ redisUrl, log, signal }): Promise<RunningService> {
      const { child, exited } = await spawnEngineProcess(
        options.command ?? engineCommandLine(),
        { REDIS_URL: redisUrl },
        { signal },
      );
      log.info({ enginePid: child.pid }, "engine process ready");
      let stopping = false;
      return {
        // A stop is not a failure: then it never settles.
        failed: exited.then((how) =>
          stopping
            ? new Promise<Error>(() => {})
            : new UserFacingError(`the engine process stopped unexpectedly (${how})`),
        ),
        async stop() {
          stopping = true;
          await stopEngineProcess({ child, exited }, options.stopTimeoutMs ?? 45_000);
        },
      };
    },
  };
}

/** SIGTERM (the engine finishes or hands back its job), then SIGKILL after `timeoutMs`. */
export async function stopEngineProcess({ child, exited }: EngineProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  await exited;
  clearTimeout(timer);
}
