// The Discord bot as a service of `start` and `bot run` (its queue side: src/bots/queue-side.ts).

import { PromptCheck } from "../../commands/prompt-check.js";
import { requireSetting } from "../../config.js";
import type { Service } from "../../services.js";
import { startOnQueue } from "../queue-side.js";
import { type DiscordBotOptions, startDiscordBot } from "./bot.js";

/**
 * `required`: `bot run` needs DISCORD_TOKEN; `start` runs the bot only when it is set. `commands`: the
 * operator's command settings (the chaos benchmark cuts /imagic's steps).
 */
export function discordService(options: {
  required: boolean;
  commands?: DiscordBotOptions["commands"];
}): Service {
  return {
    name: "discord",
    async start({ config, redisUrl, log }) {
      if (!config.discordToken && !options.required) {
        log.info("DISCORD_TOKEN is unset: the Discord bot does not run");
        return { stop: async () => {} };
      }
      const token = requireSetting(config, "discordToken", "the Discord bot").reveal();
      return startOnQueue("discord", config, redisUrl, (side) =>
        startDiscordBot({
          token,
          apiUrl: config.discordApiUrl,
          ...side,
          commands: { prompts: PromptCheck.forModel(config, log), ...options.commands },
        }),
      );
    },
  };
}
