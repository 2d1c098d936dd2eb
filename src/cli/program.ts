import { Command } from "commander";
import { appConfig } from "../config.js";
import { configureLogger } from "../log.js";
import { benchCommand } from "./bench/index.js";
import { botCommand } from "./bot.js";
import { demoCommand } from "./demo.js";
import { editCommand } from "./edit/index.js";
import { engineCommand } from "./engine.js";
import { setupCommand } from "./setup.js";
import { startCommand } from "./start.js";

/** Subcommands, each built by its own file (CONTRACTS.md §0). */
const SUBCOMMANDS: Array<() => Command> = [
  startCommand,
  demoCommand,
  botCommand,
  engineCommand,
  editCommand,
  benchCommand,
  setupCommand,
];

export function buildProgram(): Command {
  const program = new Command("photo-edit-bot")
    .description("Discord/Slack bot that edits real photos with Imagic and Photoswap")
    .version(process.env.npm_package_version ?? "0.1.0", "-V, --version")
    // A command's options are its own, not its parent's: `demo swap --out x` is the swap demo's --out.
    .enablePositionalOptions()
    // Settings come from the environment (and .env), validated once before any action runs:
    // a bad one stops here with a line naming the variable, before anything is started.
    .hook("preAction", () => {
      const config = appConfig();
      configureLogger({ level: config.logLevel, pretty: config.logPretty });
    });
  for (const make of SUBCOMMANDS) program.addCommand(make());
  return program;
}
