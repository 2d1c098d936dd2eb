// Inline code that shows what a user typed as typed, whatever it holds.
import { describe, expect, it } from "vitest";
import { codeSpan } from "../../src/commands/texts.js";

describe("codeSpan", () => {
  it("fences with more backticks than any run inside, padding a backtick at either end, on one line", () => {
    expect(codeSpan("a photo")).toBe("`a photo`");
    expect(codeSpan("a `cat`")).toBe("`` a `cat` ``");
    expect(codeSpan("``two`` and `one` here")).toBe("``` ``two`` and `one` here ```");
    expect(codeSpan("no ` end")).toBe("``no ` end``");
    expect(codeSpan("two\n  lines")).toBe("`two lines`");
  });
});
