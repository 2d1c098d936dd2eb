import pino, { type LevelWithSilent, type Logger } from "pino";
import { prettyFactory } from "pino-pretty";

export type { Logger };

const LEVELS: readonly LevelWithSilent[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

interface Sink {
  write(line: string): void;
}

// Logs go to stderr so that commands printing results (bench, edit) keep stdout clean. On Linux,
// writes to stderr (a file, pipe or terminal) are synchronous: the last lines before a crash or
// process.exit() are not lost.
const jsonSink = (): Sink => ({ write: (line) => process.stderr.write(line) });
// pino-pretty's formatter called in this thread, not a worker transport: transports resolve modules at
// run time and break the esbuild bundle.
const prettySink = (): Sink => {
  const format = prettyFactory({ colorize: process.stderr.isTTY === true });
  return { write: (line) => process.stderr.write(format(line)) };
};

/** Forwards to the current sink, so configureLogger() can switch format after the logger exists. */
const sink = {
  target: undefined as Sink | undefined,
  write(line: string): void {
    this.target?.write(line);
  },
};

function envLevel(): LevelWithSilent {
  const requested = process.env.LOG_LEVEL as LevelWithSilent | undefined;
  if (requested && LEVELS.includes(requested)) return requested;
  // Under vitest the suite would drown in start-up lines; tests that need logs set LOG_LEVEL.
  return process.env.VITEST ? "silent" : "info";
}

function envPretty(): boolean {
  const flag = process.env.LOG_PRETTY?.toLowerCase();
  if (flag === "true" || flag === "1") return true;
  if (flag === "false" || flag === "0") return false;
  return process.stderr.isTTY === true;
}

sink.target = envPretty() ? prettySink() : jsonSink();

/**
 * The process-wide logger. Its level and format come from LOG_LEVEL / LOG_PRETTY as found at import
 * time; the CLI calls configureLogger() with the validated config (which may come from .env).
 */
export const logger: Logger = pino(
  {
    level: envLevel(),
    base: { pid: process.pid },
    // Belt and braces: the config wraps secrets, but a token pasted into some other object is masked too.
    redact: {
      paths: ["token", "*.token", "authorization", "*.authorization", "password", "*.password"],
      censor: "[redacted]",
    },
  },
  sink,
);

export function configureLogger(options: { level: LevelWithSilent; pretty: boolean }): void {
  logger.level = options.level;
  sink.target = options.pretty ? prettySink() : jsonSink();
}

/** A logger whose lines carry `area` (e.g. "queue", "engine", "discord"). */
export function childLogger(area: string, bindings: Record<string, unknown> = {}): Logger {
  return logger.child({ area, ...bindings });
}
