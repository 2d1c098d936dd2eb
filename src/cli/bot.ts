import { Argument, Command } from "commander";
import { registerCommands } from "../bots/discord/register.js";
import { discordService } from "../bots/discord/service.js";
import { slackConfigured, slackService } from "../bots/slack/service.js";
import { appConfig, requireSetting } from "../config.js";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import { runServices } from "../services.js";

export function botCommand(): Command {
  const bot = new Command("bot").description(
    "run the chat adapters (Discord, Slack) or register their commands",
  );
  bot
    .command("run")
    .description(
      "run the chat bots against the queue (REDIS_URL or an embedded Redis) until Ctrl-C: those named, else every one whose token is set",
    )
    .addArgument(new Argument("[platforms...]", "the bots to run").choices(["discord", "slack"]))
    .action(async (platforms: Array<"discord" | "slack">) => {
      const config = appConfig();
      const chosen: Array<"discord" | "slack"> =
        platforms.length > 0
          ? platforms
          : (["discord", "slack"] as const).filter((p) =>
              p === "discord" ? config.discordToken !== undefined : slackConfigured(config),
            );
      if (chosen.length === 0) {
        throw new UserFacingError(
          "bot run: set DISCORD_TOKEN or SLACK_BOT_TOKEN (and the settings it needs), or name a platform",
        );
      }
      const services = { discord: discordService, slack: slackService };
      await runServices(
        config,
        [...new Set(chosen)].map((p) => services[p]({ required: true })),
        chosen.includes("slack") && config.slackMode === "http"
          ? { ports: [[config.slackHttpPort, "SLACK_HTTP_PORT"]] }
          : {},
      );
    });
  bot
    .command("register")
    .description(
      "register the slash commands: in DISCORD_GUILD_ID when set, else globally (either takes effect at once)",
    )
    .option("--global", "register globally (every server and DM) even when DISCORD_GUILD_ID is set")
    .action(async (opts: { global?: boolean }) => {
      const config = appConfig();
      const guildId = opts.global ? undefined : config.discordGuildId;
      const registered = await registerCommands({
        token: requireSetting(config, "discordToken", "bot register").reveal(),
        applicationId: requireSetting(config, "discordApplicationId", "bot register"),
        guildId,
        apiUrl: config.discordApiUrl,
      });
      childLogger("discord").info(
        { scope: registered.scope, guildId, commands: registered.names },
        `registered /${registered.names.join(", /")} ${registered.scope === "guild" ? `in server ${guildId}` : "globally"}`,
      );
    });
  return bot;
}
