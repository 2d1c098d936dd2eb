// The commands users run, described once, chat-agnostically. The Discord adapter turns these into
// slash commands, the Slack adapter into modals; the parser (parse.ts) checks values against the same
// bounds, because a platform's own checks (Discord's min/max) are a convenience, not a guarantee.

import { formatList } from "../engine/intake/kinds.js";
import { LIMITS, PRESET_NAMES } from "../spec/imagic.js";
import { MAX_PROMPT_LENGTH, MAX_SEEDS, MAX_SUBJECT_LENGTH } from "../spec/request.js";
import { MAX_REFERENCES, MAX_STRENGTHS_LENGTH, SWAP_SAMPLING_STEPS, SWAP_STRENGTHS } from "../spec/swap.js";
import { DEFAULT_IMAGE_LIMITS } from "../spec/upload.js";

/** `attachment` options all take a photo; `integer` takes whole numbers only, `number` any. */
export type OptionType = "attachment" | "string" | "number" | "integer";

export interface OptionDefinition {
  name: string;
  type: OptionType;
  description: string;
  required: boolean;
  choices?: readonly string[];
  min?: number;
  max?: number;
  maxLength?: number;
}

export interface CommandDefinition {
  name: string;
  description: string;
  options: readonly OptionDefinition[];
}

/** The Imagic presets (the pipeline's own list, which the queue's payload schema uses too). */
export const IMAGIC_PRESETS = PRESET_NAMES;
export const ETA_RANGE = { min: LIMITS.etaMin, max: LIMITS.etaMax } as const;

const seedsOption: OptionDefinition = {
  name: "seeds",
  type: "string",
  description: `how many variants (1-${MAX_SEEDS}), or the seeds themselves: "7,42,1234"`,
  required: false,
  maxLength: 100,
};

/** A forced working size (src/spec/shape.ts), for /imagic's photo and /swap's source photo alike. */
const sizeOption: OptionDefinition = {
  name: "size",
  type: "string",
  description: 'force a size: a side ("512") or width×height ("768x512"); default: your photo\'s own shape',
  required: false,
  maxLength: 20,
};

export const COMMANDS: readonly CommandDefinition[] = [
  {
    name: "imagic",
    description: "Edit a photo to match a text prompt (Imagic)",
    options: [
      {
        name: "image",
        type: "attachment",
        description: `the photo to edit (${formatList(DEFAULT_IMAGE_LIMITS.formats)})`,
        required: true,
      },
      {
        name: "prompt",
        type: "string",
        description: 'what the photo should show, e.g. "a photo of a sitting dog"',
        required: true,
        maxLength: MAX_PROMPT_LENGTH,
      },
      {
        name: "preset",
        type: "string",
        description: "speed against faithfulness: fast, balanced (default) or paper",
        required: false,
        choices: IMAGIC_PRESETS,
      },
      {
        name: "eta",
        type: "number",
        description: `edit strength η for the first grid, ${ETA_RANGE.min}-${ETA_RANGE.max} (default: the preset's)`,
        required: false,
        min: ETA_RANGE.min,
        max: ETA_RANGE.max,
      },
      seedsOption,
      sizeOption,
    ],
  },
  {
    name: "swap",
    description: "Swap the subject of a photo for the one in your reference photos (Photoswap)",
    options: [
      {
        name: "source",
        type: "attachment",
        description: "the photo whose subject is replaced",
        required: true,
      },
      {
        name: "subject",
        type: "string",
        description: 'the subject word, e.g. "cat"',
        required: true,
        maxLength: MAX_SUBJECT_LENGTH,
      },
      ...Array.from({ length: MAX_REFERENCES }, (_, i) => ({
        name: `reference${i + 1}`,
        type: "attachment" as const,
        description: `reference photo ${i + 1} of the new subject`,
        required: i === 0,
      })),
      ...SWAP_STRENGTHS.map(
        (s): OptionDefinition => ({
          name: s.name,
          type: "integer",
          description: `steps (of ${SWAP_SAMPLING_STEPS}) that keep the source's ${s.what} (default ${s.paper})`,
          required: false,
          min: 0,
          max: SWAP_SAMPLING_STEPS,
        }),
      ),
      {
        name: "strengths",
        type: "string",
        description: `several strengths, one grid row each: φ/M/A steps (of ${SWAP_SAMPLING_STEPS}), e.g. "10/25/20,5/15/10"`,
        required: false,
        maxLength: MAX_STRENGTHS_LENGTH,
      },
      seedsOption,
      sizeOption,
    ],
  },
  {
    name: "cancel",
    description: "Cancel your queued and running edits (in an edit's thread: just that one)",
    options: [],
  },
  { name: "queue", description: "Where are my edits: queue position, running stage, ETA", options: [] },
  { name: "help", description: "How to use this bot", options: [] },
];
