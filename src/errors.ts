/**
 * An error whose message is written for the person who caused it (a chat user, an operator at the
 * CLI): one clear line naming the thing and the limit, no stack trace. Anything else that escapes
 * is a bug and is logged with its stack.
 */
export class UserFacingError extends Error {
  override name = "UserFacingError";
}

/** A missing or malformed setting; the message names the environment variable and what it expects. */
export class ConfigError extends UserFacingError {
  override name = "ConfigError";
}
