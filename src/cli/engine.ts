import { Command } from "commander";
import { runServicesAsChild } from "../child-process.js";
import { appConfig } from "../config.js";
import { engineService } from "../engine/worker/index.js";

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
      // Started by `start` (or the chaos benchmark): says when jobs are taken, and stops with it.
      await runServicesAsChild(config, [engineService], {
        ports: [[config.engineHttpPort, "ENGINE_HTTP_PORT"]],
      });
    });
}
