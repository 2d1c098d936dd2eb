import { Command } from "commander";
import { registerCommands } from "../bots/discord/register.js";
import { discordService } from "../bots/discord/service.js";
import { appConfig, requireSetting } from "../config.js";
import { childLogger } from "../log.js";
import { runServices } from "../services.js";

export function botCommand(): Command {
  const bot = new Command("bot").description(
    "run the chat adapters (Discord, Slack) or register their commands",
  );
  bot
    .command("run")
    .description("run the Discord bot against the queue (REDIS_URL or an embedded Redis) until Ctrl-C")
    .action(async () => {
      await runServices(appConfig(), [discordService({ required: true })]);
    });
  bot
    .command("register")
    .description("register the slash commands: in DISCORD_GUILD_ID when set (instant), else globally")
    .option("--global", "register globally even when DISCORD_GUILD_ID is set (takes up to an hour to show)")
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
