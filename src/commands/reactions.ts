// Number reactions: the tiles of a grid are numbered 1…n and picked by reacting with that number.

/** Keycap emoji 1️⃣…🔟, in tile order. */
export const NUMBER_EMOJIS = ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣", "6️⃣", "7️⃣", "8️⃣", "9️⃣", "🔟"] as const;

/** Most choices one message can offer. */
const MAX_CHOICES = NUMBER_EMOJIS.length;

// Platforms differ in how they spell a keycap: with or without the variation selector U+FE0F, or by
// name (Slack's "one"). Compare on the bare form.
const SLACK_NAMES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "keycap_ten"];
const bare = (emoji: string) => emoji.replace(/\uFE0F/g, "");

export function numberEmojis(count: number): string[] {
  if (count < 1 || count > MAX_CHOICES)
    throw new RangeError(`numberEmojis: ${count} choices (1-${MAX_CHOICES})`);
  return NUMBER_EMOJIS.slice(0, count);
}

/** Slack's name of a number emoji ("2️⃣" → "two"), which reactions.add takes instead of the glyph. */
export function slackEmojiName(emoji: string): string {
  const name = SLACK_NAMES[NUMBER_EMOJIS.findIndex((e) => bare(e) === bare(emoji))];
  if (!name) throw new RangeError(`slackEmojiName: ${emoji} is not a number emoji`);
  return name;
}

/**
 * The 0-based choice an emoji stands for among `count`, or undefined when it is not one of them.
 * `byName`: also Slack's names ("two"). Only where names are the platform's spelling of its keycaps: on
 * Discord a name without a glyph is a server's custom emoji, which one may well call "two".
 */
export function choiceIndex(emoji: string, count: number, byName = true): number | undefined {
  const byGlyph = NUMBER_EMOJIS.findIndex((e) => bare(e) === bare(emoji));
  const index = byGlyph >= 0 ? byGlyph : byName ? SLACK_NAMES.indexOf(emoji.replace(/^:|:$/g, "")) : -1;
  return index >= 0 && index < count ? index : undefined;
}
