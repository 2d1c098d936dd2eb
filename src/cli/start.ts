import { Command } from "commander";
import { appConfig, redactedConfig } from "../config.js";
import { childLogger } from "../log.js";

export function startCommand(): Command {
  return new Command("start")
    .description("run everything on one machine: embedded Redis (or REDIS_URL), engine worker and bots")
    .action(() => {
      const log = childLogger("start");
      log.info({ config: redactedConfig(appConfig()) }, "configuration");
    });
}
