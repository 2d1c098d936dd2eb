// Photoswap's user-facing settings: the swap strengths and their defaults, and the limits a request is
// checked against (by the chat layer, the CLI and the queue alike).

/** Reference photos of the new subject a concept is learned from. */
export const MIN_REFERENCES = 1;
export const MAX_REFERENCES = 5;

/** DDIM steps of a swap (the official code's NUM_DDIM_STEPS). */
export const SWAP_SAMPLING_STEPS = 50;
export const SWAP_GUIDANCE = 7.5;

/**
 * Photoswap's swap strengths: for how many of the sampling steps the target generation takes the
 * source's self-attention output φ, self-attention map M and cross-attention map A (paper: λφ=10,
 * λM=25, λA=20 of 50). More steps keep more of the source's layout and appearance; fewer let the new
 * subject show more of itself.
 */
export const SWAP_STRENGTHS = [
  { name: "self_output_steps", key: "selfOutputSteps", what: "self-attention output φ", paper: 10 },
  { name: "self_map_steps", key: "selfMapSteps", what: "self-attention map M", paper: 25 },
  { name: "cross_map_steps", key: "crossMapSteps", what: "cross-attention map A", paper: 20 },
] as const;
export type SwapStrengthKey = (typeof SWAP_STRENGTHS)[number]["key"];

/** The paper's strengths, by key. */
export const PAPER_STRENGTHS = Object.fromEntries(SWAP_STRENGTHS.map((s) => [s.key, s.paper])) as Record<
  SwapStrengthKey,
  number
>;

/** What a swap request may ask for. */
export const SWAP_LIMITS = {
  /** A strength counts sampling steps, so it is at most the largest step count. */
  strengthSteps: 150,
  samplingSteps: 150,
  conceptSteps: 5000,
} as const;
