// Inline code that shows what a user typed as typed, whatever it holds.
import { describe, expect, it } from "vitest";
import { COMMANDS } from "../../src/commands/definitions.js";
import { codeSpan, helpText } from "../../src/commands/texts.js";

describe("codeSpan", () => {
  it("fences with more backticks than any run inside, padding a backtick at either end, on one line", () => {
    expect(codeSpan("a photo")).toBe("`a photo`");
    expect(codeSpan("a `cat`")).toBe("`` a `cat` ``");
    expect(codeSpan("``two`` and `one` here")).toBe("``` ``two`` and `one` here ```");
    expect(codeSpan("no ` end")).toBe("``no ` end``");
    expect(codeSpan("two\n  lines")).toBe("`two lines`");
  });
});

describe("helpText and the command definitions", () => {
  it("name every photo format the uploads' check accepts (HEIC included), as its refusals do", () => {
    const formats = "JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF";
    for (const platform of ["discord", "slack"] as const) expect(helpText(platform)).toContain(formats);
    const image = COMMANDS.find((c) => c.name === "imagic")?.options.find((o) => o.name === "image");
    expect(image?.description).toContain(formats);
    // Discord's limit on an option's description.
    expect(image?.description.length).toBeLessThanOrEqual(100);
  });
});
