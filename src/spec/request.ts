// Limits every edit request shares, whichever command, chat platform or queue path it comes through.
// The chat layer (src/commands) checks a user's input against them and the queue's payload schemas
// (src/queue/jobs.ts) enforce them again at enqueue, so both read them from here.

/** Longest prompt (characters, after trimming). CLIP reads at most 75 tokens of it; the rest is reported. */
export const MAX_PROMPT_LENGTH = 500;
/** Longest subject word or phrase (/swap). */
export const MAX_SUBJECT_LENGTH = 64;
/** Most seeds (variants) one request may ask for. */
export const MAX_SEEDS = 8;
/** A seed is a 32-bit unsigned integer (the Philox key). */
export const MAX_SEED = 2 ** 32 - 1;
/** Variants a request gets when it names no seeds. */
export const DEFAULT_SEED_COUNT = 4;
