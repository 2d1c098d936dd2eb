// The Slack bot as a service of `start` and `bot run` (its queue side: src/bots/queue-side.ts).

import { PromptCheck } from "../../commands/prompt-check.js";
import { type Config, requireSetting } from "../../config.js";
import type { Service } from "../../services.js";
import { startOnQueue } from "../queue-side.js";
import { type SlackConnection, startSlackBot } from "./bot.js";

/** True when any Slack setting is given: then every one the chosen mode needs must be. */
export const slackConfigured = (config: Config) =>
  config.slackBotToken !== undefined ||
  config.slackAppToken !== undefined ||
  config.slackSigningSecret !== undefined;

/** The settings the mode needs; throws a ConfigError naming the first one missing. */
export function slackSettings(config: Config): { botToken: string; connection: SlackConnection } {
  const purpose = `the Slack bot (SLACK_MODE=${config.slackMode})`;
  const botToken = requireSetting(config, "slackBotToken", purpose).reveal();
  if (config.slackMode === "socket") {
    return {
      botToken,
      connection: { mode: "socket", appToken: requireSetting(config, "slackAppToken", purpose).reveal() },
    };
  }
  const signingSecret = requireSetting(config, "slackSigningSecret", purpose).reveal();
  return { botToken, connection: { mode: "http", signingSecret, port: config.slackHttpPort } };
}

/**
 * `required`: `bot run slack` needs the Slack settings; `start` runs the bot only when some are set (and then
 * says which one is missing).
 */
export function slackService(options: { required: boolean }): Service {
  return {
    name: "slack",
    async start({ config, redisUrl, log }) {
      if (!slackConfigured(config) && !options.required) {
        log.info("SLACK_BOT_TOKEN is unset: the Slack bot does not run");
        return { stop: async () => {} };
      }
      const settings = slackSettings(config);
      return startOnQueue("slack", config, redisUrl, (side) =>
        startSlackBot({
          ...settings,
          apiUrl: config.slackApiUrl,
          ...side,
          commands: { prompts: PromptCheck.forModel(config, log) },
        }),
      );
    },
  };
}
