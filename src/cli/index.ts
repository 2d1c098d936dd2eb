#!/usr/bin/env node
import { UserFacingError } from "../errors.js";
import { logger } from "../log.js";
import { buildProgram } from "./program.js";

// commander reports usage mistakes (unknown command or option) itself, in one line, and exits 1.
// What reaches the catch is an action's failure.
try {
  await buildProgram().parseAsync(process.argv);
} catch (error) {
  if (error instanceof UserFacingError) {
    process.stderr.write(`${error.message}\n`);
    process.exitCode = 1;
  } else {
    logger.fatal({ err: error }, "unexpected error");
    process.exitCode = 1;
  }
}
