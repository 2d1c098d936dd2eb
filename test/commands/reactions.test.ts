import { describe, expect, it } from "vitest";
import { choiceIndex, numberEmojis, slackEmojiName } from "../../src/commands/reactions.js";

describe("number reactions", () => {
  it("offers 1️⃣…n in order", () => {
    expect(numberEmojis(3)).toEqual(["1️⃣", "2️⃣", "3️⃣"]);
    expect(numberEmojis(10).at(-1)).toBe("🔟");
    expect(() => numberEmojis(11)).toThrow(RangeError);
  });

  it("maps a keycap to its choice, with or without the variation selector, or by Slack name", () => {
    expect(choiceIndex("2️⃣", 3)).toBe(1);
    expect(choiceIndex("2\u20e3", 3)).toBe(1);
    expect(choiceIndex("three", 3)).toBe(2);
    expect(choiceIndex(":keycap_ten:", 10)).toBe(9);
  });

  it("ignores numbers beyond the offer and other emoji", () => {
    expect(choiceIndex("4️⃣", 3)).toBeUndefined();
    expect(choiceIndex("👍", 3)).toBeUndefined();
    expect(choiceIndex("four", 3)).toBeUndefined();
  });

  it("reads Slack's names only where asked: elsewhere a name is a custom emoji", () => {
    expect(choiceIndex("two", 3, false)).toBeUndefined();
    expect(choiceIndex(":keycap_ten:", 10, false)).toBeUndefined();
    expect(choiceIndex("2️⃣", 3, false)).toBe(1);
  });

  it("names each number the way Slack's reactions.add wants it, and back", () => {
    const names = numberEmojis(10).map(slackEmojiName);
    expect(names).toEqual([
      "one",
      "two",
      "three",
      "four",
      "five",
      "six",
      "seven",
      "eight",
      "nine",
      "keycap_ten",
    ]);
    expect(names.map((name) => choiceIndex(name, 10))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(slackEmojiName("2\u20e3")).toBe("two");
    expect(() => slackEmojiName("👍")).toThrow(RangeError);
  });
});
