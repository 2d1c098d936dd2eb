// Option parsing for /imagic and /swap: everything that can be checked without downloading a byte.
// Each problem is a UserFacingError naming the option and the limit.
import { randomInt } from "node:crypto";
import { UserFacingError } from "../errors.js";
import {
  DEFAULT_SEED_COUNT,
  MAX_PROMPT_LENGTH,
  MAX_SEED,
  MAX_SEEDS,
  MAX_SUBJECT_LENGTH,
} from "../spec/request.js";
import { parseSize, type Size } from "../spec/shape.js";
import {
  checkSubjectWord,
  checkVariantCount,
  DEFAULT_CONCEPT_TOKEN,
  MAX_REFERENCES,
  MAX_STRENGTHS_LENGTH,
  parseStrengthList,
  SWAP_SAMPLING_STEPS,
  SWAP_STRENGTHS,
  type SwapStrengthKey,
  type SwapStrengths,
} from "../spec/swap.js";
import type { CommandRequest, IncomingAttachment, OptionValue } from "./chat.js";
import { ETA_RANGE, IMAGIC_PRESETS } from "./definitions.js";

export type ImagicPreset = (typeof IMAGIC_PRESETS)[number];

export interface ImagicRequest {
  image: IncomingAttachment;
  prompt: string;
  preset?: ImagicPreset;
  eta?: number;
  seeds: number[];
  /** A forced working size (src/spec/shape.ts); absent: the photo's own aspect ratio. */
  size?: Size;
}

export interface SwapRequest {
  source: IncomingAttachment;
  references: IncomingAttachment[];
  subject: string;
  seeds: number[];
  /** Only the swap strengths the user set; the queue's defaults (the paper's) fill the rest. */
  strengths: Partial<Record<SwapStrengthKey, number>>;
  /** `strengths`: several full sets (one grid row each), instead of the single options above. */
  strengthList?: SwapStrengths[];
  /** A forced working size of the source photo (src/spec/shape.ts); absent: its own aspect ratio. */
  size?: Size;
}

/**
 * Characters that show nothing but reach the model and every echo of the text: controls (NUL, BEL…; the
 * line breaks among them are whitespace) and format characters (zero-width spaces, bidi overrides that
 * turn the rest of a message around, BOM, soft hyphen). The zero-width joiner and the tag characters stay:
 * they hold emoji sequences together (👩‍💻, a subdivision's flag).
 */
const INVISIBLE = /[\p{Cc}\p{Cf}]/gu;
/** The format characters kept: the zero-width joiner and the tag characters. */
const JOINERS = "\\u200d\\u{e0020}-\\u{e007f}";
const KEPT_FORMAT = new RegExp(`[${JOINERS}]`, "u");
const NOT_SHOWN = new RegExp(`[\\s\\p{M}${JOINERS}]`, "gu");
/** Whether anything of a text shows: something other than whitespace, joiners and combining marks. */
const visible = (text: string) => text.replace(NOT_SHOWN, "").length > 0;

/** `text` with each decimal digit of any script (Arabic-Indic ٣, fullwidth ３…) as its ASCII digit. */
export function asciiDigits(text: string): string {
  return text.replace(/\p{Nd}/gu, (digit) => {
    // Unicode's decimal digits come in runs of ten (0…9) in code point order: count back to the run's 0.
    let zero = digit.codePointAt(0) as number;
    while (/\p{Nd}/u.test(String.fromCodePoint(zero - 1))) zero--;
    return String(((digit.codePointAt(0) as number) - zero) % 10);
  });
}

/** An option's value as text without its invisible characters (the line breaks among them become spaces). */
function visibleText(value: OptionValue): string {
  return String(value).replace(INVISIBLE, (c) => (/\s/.test(c) ? " " : KEPT_FORMAT.test(c) ? c : ""));
}

/**
 * A number-like option's value as typed, for its own parser: the invisible characters dropped (a "512" pasted
 * with a zero-width space was refused with a message that showed "512") and every digit as ASCII.
 */
function plainValue(value: OptionValue): string {
  return asciiDigits(visibleText(value)).trim();
}

function text(options: CommandRequest["options"], name: string, maxLength: number): string | undefined {
  const value = options[name];
  if (value === undefined) return undefined;
  const trimmed = visibleText(value).trim().replace(/\s+/g, " ");
  // Only invisible characters (a zero-width space, a bidi mark) is as empty as nothing, for the user.
  if (!visible(trimmed)) throw new UserFacingError(`\`${name}\` is empty: write a few words`);
  if (trimmed.length > maxLength) {
    throw new UserFacingError(`\`${name}\` is ${trimmed.length} characters; the limit is ${maxLength}`);
  }
  return trimmed;
}

function required<T>(value: T | undefined, name: string): T {
  if (value === undefined) throw new UserFacingError(`\`${name}\` is required`);
  return value;
}

/**
 * The photo an attachment option carries. One option carries one photo: a second one (a Slack form sent
 * other than by Slack's client, which enforces the inputs' max_files) is refused, not silently left out.
 */
function attachment(request: CommandRequest, option: string): IncomingAttachment | undefined {
  const given = request.attachments.filter((a) => a.option === option);
  if (given.length > 1) throw new UserFacingError(`\`${option}\` takes one photo; ${given.length} were sent`);
  return given[0];
}

const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/i;

function number(value: OptionValue | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  // A decimal number as people write it (Slack's number inputs arrive as text): Number() alone would read
  // "" and " " as 0 and "0x1" as hex.
  const written = plainValue(value);
  const n = typeof value === "number" ? value : DECIMAL.test(written) ? Number(written) : Number.NaN;
  if (!Number.isFinite(n) || n < min || n > max) {
    const got = written === "" ? '""' : String(value);
    throw new UserFacingError(`\`${name}\` must be a number from ${min} to ${max} (got ${got})`);
  }
  return n;
}

/**
 * `seeds`: a count 1–MAX_SEEDS ("4" → four random seeds), or the seeds themselves separated by commas
 * or spaces ("7, 42"; a single seed as "1234,"). Absent: DEFAULT_SEED_COUNT random seeds.
 */
export function parseSeeds(
  value: OptionValue | undefined,
  random: () => number = () => randomInt(0, 2 ** 31),
): number[] {
  if (value === undefined) return Array.from({ length: DEFAULT_SEED_COUNT }, random);
  const raw = plainValue(value);
  if (/^\d+$/.test(raw) && Number(raw) >= 1 && Number(raw) <= MAX_SEEDS) {
    return Array.from({ length: Number(raw) }, random);
  }
  const parts = raw.split(/[\s,]+/).filter(Boolean);
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p) || Number(p) > MAX_SEED)) {
    throw new UserFacingError(
      `\`seeds\` must be a count from 1 to ${MAX_SEEDS} or whole numbers from 0 to ${MAX_SEED} separated by commas (got "${raw}")`,
    );
  }
  const seeds = [...new Set(parts.map(Number))];
  if (seeds.length > MAX_SEEDS) {
    throw new UserFacingError(`\`seeds\` lists ${seeds.length} seeds; the limit is ${MAX_SEEDS}`);
  }
  return seeds;
}

/** `size`, /imagic's and /swap's: a forced working size, checked against src/spec/shape.ts's limits. */
function sizeOf(request: CommandRequest): { size?: Size } {
  const value = request.options.size;
  return value === undefined ? {} : { size: parseSize(plainValue(value), "`size`") };
}

export function parseImagic(request: CommandRequest): ImagicRequest {
  const image = required(attachment(request, "image"), "image");
  const prompt = required(text(request.options, "prompt", MAX_PROMPT_LENGTH), "prompt");
  const presetValue = request.options.preset;
  let preset: ImagicPreset | undefined;
  if (presetValue !== undefined) {
    preset = IMAGIC_PRESETS.find((p) => p === visibleText(presetValue).trim().toLowerCase());
    if (!preset) {
      throw new UserFacingError(
        `\`preset\` must be one of ${IMAGIC_PRESETS.join(", ")} (got "${String(presetValue)}")`,
      );
    }
  }
  const eta = number(request.options.eta, "eta", ETA_RANGE.min, ETA_RANGE.max);
  return { image, prompt, preset, eta, seeds: parseSeeds(request.options.seeds), ...sizeOf(request) };
}

export function parseSwap(request: CommandRequest): SwapRequest {
  const source = required(attachment(request, "source"), "source");
  const subject = required(text(request.options, "subject", MAX_SUBJECT_LENGTH), "subject");
  // The new subject is learned as "<token> <subject>" with the default concept token.
  checkSubjectWord(subject, "`subject`", DEFAULT_CONCEPT_TOKEN);
  // Photos past the last reference option (reference6…: a form's extra files) are refused, not dropped.
  const sent = request.attachments.filter((a) => /^reference\d+$/.test(a.option)).length;
  if (sent > MAX_REFERENCES) {
    throw new UserFacingError(
      `\`reference1\`…\`reference${MAX_REFERENCES}\` take at most ${MAX_REFERENCES} photos; ${sent} were sent`,
    );
  }
  const references = Array.from({ length: MAX_REFERENCES }, (_, i) =>
    attachment(request, `reference${i + 1}`),
  ).filter((a): a is IncomingAttachment => a !== undefined);
  if (references.length === 0)
    throw new UserFacingError("`reference1` is required: attach a photo of the new subject");
  const strengths: SwapRequest["strengths"] = {};
  for (const s of SWAP_STRENGTHS) {
    const steps = number(request.options[s.name], s.name, 0, SWAP_SAMPLING_STEPS);
    if (steps === undefined) continue;
    if (!Number.isInteger(steps))
      throw new UserFacingError(`\`${s.name}\` must be a whole number of steps (got ${steps})`);
    strengths[s.key] = steps;
  }
  const seeds = parseSeeds(request.options.seeds);
  const size = sizeOf(request);
  const listed = text(request.options, "strengths", MAX_STRENGTHS_LENGTH);
  if (listed === undefined) return { source, references, subject, seeds, strengths, ...size };
  const single = SWAP_STRENGTHS.find((s) => strengths[s.key] !== undefined);
  if (single) {
    throw new UserFacingError(
      `\`strengths\` gives every step count itself: leave \`${single.name}\` out, or write it into \`strengths\``,
    );
  }
  const strengthList = parseStrengthList(asciiDigits(listed), "`strengths`", SWAP_SAMPLING_STEPS);
  checkVariantCount(seeds.length, strengthList.length, "`strengths` × `seeds`");
  return { source, references, subject, seeds, strengths, strengthList, ...size };
}
