// `bench chaos-bot` (hidden): the Discord bot as `bot run discord` runs it, with the chaos run's
// operator settings for /imagic, in a child process of the chaos run (chaos-system.ts) so that the run
// can SIGKILL it mid-post. Not for use on its own.
import { Command } from "commander";
import { discordService } from "../../bots/discord/service.js";
import { runServicesAsChild } from "../../child-process.js";
import { appConfig } from "../../config.js";

/**
 * The operator's /imagic settings in the chaos run: the fast preset cut to 8 optimizer steps per stage
 * and 4 DDIM steps, so that a job on the tiny model takes a second or two on the CPU — long enough for an
 * engine kill to land mid-job.
 */
export const CHAOS_IMAGIC_DEFAULTS = {
  preset: "fast",
  embeddingSteps: 8,
  finetuneSteps: 8,
  steps: 4,
} as const;

export function chaosBotCommand(): Command {
  return new Command("chaos-bot")
    .description("the chaos run's bot process (started by bench chaos)")
    .action(async () => {
      await runServicesAsChild(appConfig(), [
        discordService({ required: true, commands: { imagicDefaults: CHAOS_IMAGIC_DEFAULTS } }),
      ]);
    });
}
