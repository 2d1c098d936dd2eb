// Fixed texts users read: /help and the messages around picks.
import { formatList } from "../engine/intake/kinds.js";
import { formatSeconds } from "../engine/progress.js";
import { MAX_SEEDS } from "../spec/request.js";
import { MAX_REFERENCES, SWAP_LIMITS, SWAP_SAMPLING_STEPS } from "../spec/swap.js";
import { DEFAULT_IMAGE_LIMITS } from "../spec/upload.js";
import type { CommandRequest, Platform } from "./chat.js";
import { IMAGIC_PRESETS } from "./definitions.js";
import type { Choice } from "./picks.js";
import { NUMBER_EMOJIS } from "./reactions.js";

/**
 * Markdown inline code showing `text` as written (on one line): fenced with more backticks than any run
 * inside it, so a backtick in a prompt does not end it, and a mention in it is plain text that pings nobody.
 */
export function codeSpan(text: string): string {
  const flat = text.replace(/\s*\n\s*/g, " ");
  const longest = Math.max(0, ...(flat.match(/`+/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(longest + 1);
  const pad = flat.startsWith("`") || flat.endsWith("`") ? " " : "";
  return `${fence}${pad}${flat}${pad}${fence}`;
}

/**
 * What a user wrote (a prompt, a subject, a file name, a value quoted in a refusal), to show in a message
 * on `platform` without mentioning anyone. Discord's allowed_mentions keeps such text from pinging (the
 * adapters send only `notify`), so it is shown as written there. Slack has nothing like it: every "<@U…>"
 * in a message's text notifies that user, so a prompt "<@U123> as a cat" pinged U123 from the bot's public
 * answer, its grids and its final image. There a zero-width space after each "<" that opens a mention
 * ("<@…>", "<!…>") shows the same text and links nothing.
 */
export function inert(platform: Platform, text: string): string {
  return platform === "slack" ? text.replace(/<(?=[@!])/g, "<\u200b") : text;
}

/**
 * A user's words (a prompt, a subject) quoted inside one of the bot's formatted messages on `platform`:
 * shown as written, mentioning no one (inert). On Discord its markup characters are escaped too, so that
 * they format nothing: a prompt "[free nitro](https://…)" was a masked link in the bot's own message,
 * "**" or "||" in it turned the rest of the message bold or hid it, "in_a_hat" lost its underscores.
 * (Not for thread names, which Discord shows as plain text, escapes included.)
 */
export function quoted(platform: Platform, text: string): string {
  return inert(platform, platform === "discord" ? text.replace(/[\\*_~|`[\]]/g, "\\$&") : text);
}

/**
 * What a refused command was sent with, to send it again without retyping it: the slash command with its
 * options, to copy, and the files to attach again. Undefined on Slack, whose form stays open with
 * everything the user entered in it.
 */
export function retypeText(
  platform: Platform,
  request: Pick<CommandRequest, "command" | "options" | "attachments">,
): string | undefined {
  if (platform === "slack") return undefined;
  const options = Object.entries(request.options).map(([name, value]) => `${name}:${value}`);
  const files = request.attachments.map((a) => `\`${a.option}\` ${codeSpan(a.filename)}`);
  return [
    `Your command, to copy: ${codeSpan([`/${request.command}`, ...options].join(" "))}`,
    ...(files.length > 0 ? [`Attach again: ${files.join(", ")}`] : []),
  ].join("\n");
}

/** Slash commands with options and files (Discord, and the console adapter that mirrors it). */
const SLASH_USAGE = {
  imagic: '`/imagic image:<photo> prompt:"a photo of a sitting dog"` edits your photo to match the prompt.',
  swap:
    `\`/swap source:<photo> subject:"cat" reference1:<photo> … reference${MAX_REFERENCES}\` swaps the subject ` +
    "of the source photo for the one in the reference photos.",
  manage:
    "`/queue` shows where your edits are; `/cancel` stops them (run in an edit's thread: just that one).",
};

/** How each platform starts the commands: Slack's slash commands cannot carry files, so they open forms. */
const USAGE: Record<Platform, typeof SLASH_USAGE> = {
  discord: SLASH_USAGE,
  console: SLASH_USAGE,
  slack: {
    imagic:
      "`/imagic a photo of a sitting dog` (or *Edit with Imagic* in a photo message's ⋮ menu) opens a form " +
      "for your photo and the options, and edits the photo to match the prompt.",
    swap:
      `\`/swap cat\` opens a form for the source photo and up to ${MAX_REFERENCES} reference photos, and swaps ` +
      "the subject of the source photo for the one in the reference photos.",
    manage: "`/imagic queue` shows where your edits are; `/imagic cancel` stops them.",
  },
};

export function helpText(platform: Platform): string {
  const usage = USAGE[platform];
  return [
    "**Photo edits with Imagic and Photoswap**",
    `• ${usage.imagic} ` +
      `Options: \`preset\` (${IMAGIC_PRESETS.join(", ")}), \`eta\` (edit strength, 0-1.5), ` +
      `\`seeds\` (a count up to ${MAX_SEEDS}, or seeds like "7,42"), \`size\` (a square "512" or "768x512"; ` +
      "by default your photo keeps its own shape, uncropped). I fine-tune on your photo (minutes), " +
      "post a grid with one tile per seed, and you react with the tile's number. Then I render that seed " +
      "from a weak to a strong edit; react again to get the final image. New renders reuse the fine-tune " +
      "and take seconds.",
    `• ${usage.swap} ` +
      `Options: \`self_output_steps\`, \`self_map_steps\`, \`cross_map_steps\` (steps of ${SWAP_SAMPLING_STEPS} that keep the ` +
      'source\'s φ, M and A: more keeps more of the photo), or `strengths` for several at once ("10/25/20,5/15/10", ' +
      `one grid row each), \`seeds\` (seeds × strengths up to ${SWAP_LIMITS.variants}), \`size\` (as for /imagic, ` +
      "for the source photo). I learn the new subject " +
      "(minutes, once per set of references), post a grid of the variants, and you react with a tile's number " +
      "to get the final image.",
    `• ${usage.manage}`,
    // The formats the uploads' check accepts (it names them too when it refuses one), not a list of its own.
    `Only the person who started an edit can pick from its grids. Photos must be still ${formatList(DEFAULT_IMAGE_LIMITS.formats)} images.`,
  ].join("\n");
}

/** What a swap variant's label means ("seed 7 · φ10 M25 A20"), under its grid: one row per strength. */
export const SWAP_LEGEND =
  "φ/M/A: the steps that keep the source's self-attention output φ, self-attention map M and " +
  "cross-attention map A (more: closer to the source photo); with several strengths, each grid row is one.";

export function choiceLine(choices: readonly Choice[], describe: (c: Choice) => string): string {
  return choices.map((c, i) => `${NUMBER_EMOJIS[i]} ${describe(c)}`).join(" · ");
}

export function expiredText(mention: string, what: string, ttlSeconds: number, command: string): string {
  return (
    `⌛ ${mention} ${what} has expired (results are kept ${formatSeconds(ttlSeconds)}), so this pick cannot ` +
    `be rendered. Run \`/${command}\` again to start again.`
  );
}

export function etaLabel(eta: number): string {
  return `η ${Number(eta.toFixed(2))}`;
}
