import { Command } from "commander";
import { discordService } from "../bots/discord/service.js";
import { slackConfigured, slackService, slackSettings } from "../bots/slack/service.js";
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
  // The Slack bot, when its settings are set (a missing one is named).
  slackService({ required: false }),
];

export function startCommand(): Command {
  return new Command("start")
    .description("run everything on one machine: embedded Redis (or REDIS_URL), engine worker and bots")
    .action(async () => {
      const config = appConfig();
      // Some Slack settings but not all that its mode needs: say which, before anything starts.
      if (slackConfigured(config)) slackSettings(config);
      const log = childLogger("start");
      log.info({ config: redactedConfig(config) }, "configuration");
      // (The engine service warns loudly when MODEL is unset and it serves the tiny test checkpoint.)
      log.info(
        {
          redis: config.redisUrl ? redactUrl(config.redisUrl) : `embedded, data in ${config.stateDir}/redis`,
          services: SERVICES.map((service) => service.name),
          discord: config.discordToken ? "token set" : "DISCORD_TOKEN unset",
          slack: slackConfigured(config) ? `settings set, ${config.slackMode} mode` : "SLACK_BOT_TOKEN unset",
          model: config.model,
          device: config.engineDevice,
        },
        "plan",
      );
      const slackHttp = slackConfigured(config) && config.slackMode === "http";
      await runServices(config, SERVICES, {
        ports: [
          [config.engineHttpPort, "ENGINE_HTTP_PORT"],
          ...(slackHttp ? [[config.slackHttpPort, "SLACK_HTTP_PORT"] as [number, string]] : []),
        ],
      });
    });
}
