import { Command } from "commander";
import { discordService } from "../bots/discord/service.js";
import { appConfig, redactedConfig, redactUrl } from "../config.js";
import { engineProcessService } from "../engine/worker/process.js";
import { childLogger } from "../log.js";
import { runServices, type Service } from "../services.js";

/**
 * What `start` runs on one machine, in start order (stopped in reverse), all against one Redis.
 * The engine worker and the chat bots plug in here with one entry each.
 */
const SERVICES: Service[] = [
  // The engine worker, in a child process running `engine` (its session compiles and steps hold an
  // event loop for seconds; the bot's must stay free): loads MODEL once and serves queue jobs.
  engineProcessService(),
  // The Discord bot, when DISCORD_TOKEN is set.
  discordService({ required: false }),
];

export function startCommand(): Command {
  return new Command("start")
    .description("run everything on one machine: embedded Redis (or REDIS_URL), engine worker and bots")
    .action(async () => {
      const config = appConfig();
      const log = childLogger("start");
      log.info({ config: redactedConfig(config) }, "configuration");
      // (The engine service warns loudly when MODEL is unset and it serves the tiny test checkpoint.)
      log.info(
        {
          redis: config.redisUrl ? redactUrl(config.redisUrl) : `embedded, data in ${config.stateDir}/redis`,
          services: SERVICES.map((service) => service.name),
          discord: config.discordToken ? "token set" : "DISCORD_TOKEN unset",
          slack: config.slackBotToken ? "token set" : "SLACK_BOT_TOKEN unset",
          model: config.model,
          device: config.engineDevice,
        },
        "plan",
      );
      await runServices(config, SERVICES, { ports: [[config.engineHttpPort, "ENGINE_HTTP_PORT"]] });
    });
}
