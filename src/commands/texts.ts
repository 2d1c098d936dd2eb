// Fixed texts users read: /help and the messages around picks.
import { formatSeconds } from "../engine/progress.js";
import { MAX_SEEDS } from "../spec/request.js";
import { MAX_REFERENCES } from "../spec/swap.js";
import type { Platform } from "./chat.js";
import { IMAGIC_PRESETS } from "./definitions.js";
import type { Choice } from "./picks.js";
import { NUMBER_EMOJIS } from "./reactions.js";

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
    `• ${usage.swap}`,
    `• ${usage.manage}`,
    "Only the person who started an edit can pick from its grids. Photos must be still PNG, JPEG, WebP or GIF images.",
  ].join("\n");
}

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
