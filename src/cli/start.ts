import { Command } from "commander";
import { appConfig, redactedConfig } from "../config.js";
import { childLogger } from "../log.js";
import { runServices, type Service } from "../services.js";

/**
 * What `start` runs on one machine, in start order (stopped in reverse), all against one Redis.
 * The engine worker and the chat bots plug in here with one entry each.
 */
const SERVICES: Service[] = [];

export function startCommand(): Command {
  return new Command("start")
    .description("run everything on one machine: embedded Redis (or REDIS_URL), engine worker and bots")
    .action(async () => {
      const config = appConfig();
      const log = childLogger("start");
      log.info({ config: redactedConfig(config) }, "configuration");
      if (config.modelIsFixture) {
        log.warn(
          { model: config.model },
          "MODEL is unset: using the tiny TEST checkpoint, whose images are noise. Set MODEL to a diffusers folder or hub id",
        );
      }
      if (SERVICES.length === 0) {
        log.warn("no engine worker or chat bot is registered in src/cli/start.ts yet: only Redis will run");
      }
      await runServices(config, SERVICES, { ports: [[config.engineHttpPort, "ENGINE_HTTP_PORT"]] });
    });
}
