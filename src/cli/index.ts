#!/usr/bin/env node
import "./require-shim.js";
import { UserFacingError } from "../errors.js";
import { logger } from "../log.js";
import { buildProgram } from "./program.js";

// commander reports usage mistakes (unknown command or option) itself, in one line, and exits 1.
// What reaches the catch is an action's failure.
try {
  await buildProgram().parseAsync(process.argv);
} catch (error) {
  if (error instanceof UserFacingError) process.stderr.write(`${error.message}\n`);
  else logger.fatal({ err: error }, "unexpected error");
  // Whatever had started was stopped before the error got here; do not wait for client libraries'
  // idle timers (ioredis keeps one for ~2 s after a refused connection).
  process.exit(1);
}
