import { UserFacingError } from "../errors.js";

/**
 * A run stopped on request (an AbortSignal fired). Pipelines check their signal between steps, so the
 * work stops within one step; the message says where it stopped.
 */
export class CancelledError extends UserFacingError {
  override name = "CancelledError";
}

/** Throws CancelledError if `signal` has fired; `where` names the point reached, e.g. "embedding step 12/500". */
export function throwIfCancelled(signal: AbortSignal | undefined, where: string): void {
  if (signal?.aborted) throw new CancelledError(`cancelled at ${where}`);
}
