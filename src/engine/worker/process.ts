// `start` runs the engine in a process of its own. Building and compiling ONNX sessions, and much of a
// training step, hold the event loop of the process they run in for seconds; a chat bot in that process
// would miss Discord's 3-second window to acknowledge a command ("The application did not respond").
// The child is this same CLI running `engine` against the same Redis (src/child-process.ts).
import { cliCommandLine, spawnCliProcess, stopCliProcess } from "../../child-process.js";
import { UserFacingError } from "../../errors.js";
import type { RunningService, Service } from "../../services.js";

export interface EngineProcessOptions {
  /** The command that runs `engine` (default: this CLI's own, cliCommandLine("engine")). */
  command?: readonly string[];
  /** How long a stop waits for the engine to finish or hand back its job before killing it. */
  stopTimeoutMs?: number;
}

export function engineProcessService(options: EngineProcessOptions = {}): Service {
  return {
    name: "engine",
    async start({ redisUrl, log, signal }): Promise<RunningService> {
      const { child, exited } = await spawnCliProcess(
        "engine",
        options.command ?? cliCommandLine("engine"),
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
          await stopCliProcess({ child, exited }, options.stopTimeoutMs ?? 45_000);
        },
      };
    },
  };
}
