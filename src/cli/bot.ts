import { Command } from "commander";

// Registered by foundation so the CLI's shape is fixed; the discord owner adds `run` and `register`.
export function botCommand(): Command {
  return new Command("bot").description("run the chat adapters (Discord, Slack) or register their commands");
}
