import { Command } from "commander";
import { UserFacingError } from "../errors.js";

// Placeholder registered by foundation so the CLI's shape is fixed; the queue owner replaces the action.
export function engineCommand(): Command {
  return new Command("engine")
    .description("run an engine worker (one per GPU) against the queue")
    .action(() => {
      throw new UserFacingError("engine: the queue worker is not available yet");
    });
}
