import { Command } from "commander";
import { appConfig } from "../config.js";
import { engineService } from "../engine/worker/index.js";
import { ENGINE_READY } from "../engine/worker/process.js";
import { runServices } from "../services.js";

/**
 * `engine`: one engine worker (run one per GPU) against REDIS_URL, or an embedded Redis when unset.
 * SIGTERM/SIGINT finish the current job, or hand it back to the queue after a 30 s grace.
 */
export function engineCommand(): Command {
  return new Command("engine")
    .description(
      "run an engine worker (one per GPU): loads MODEL once, serves queue jobs, /healthz /readyz /metrics",
    )
    .action(async () => {
      const config = appConfig();
      // Started by `start` (an IPC channel to it): say when jobs are taken, and stop with it.
      const parent = process.send ? process : undefined;
      const orphaned = () => process.kill(process.pid, "SIGTERM");
      parent?.once("disconnect", orphaned);
      try {
        await runServices(config, [engineService], {
          ports: [[config.engineHttpPort, "ENGINE_HTTP_PORT"]],
          onReady: () => parent?.send?.(ENGINE_READY),
        });
      } finally {
        // The open channel would keep this process alive.
        parent?.off("disconnect", orphaned);
        parent?.disconnect?.();
      }
    });
}
