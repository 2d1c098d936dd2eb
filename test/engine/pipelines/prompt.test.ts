import { describe, expect, it } from "vitest";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { checkPrompt } from "../../../src/engine/pipelines/prompt.js";

const { tokenizer } = openCheckpoint("test/fixtures/models/sd1/model");

describe("checkPrompt", () => {
  it("refuses an empty prompt and an over-long one, saying where CLIP would cut it", () => {
    expect(() => checkPrompt(tokenizer, "   ")).toThrow("the prompt is empty");
    // Special tokens are split out whole: these read to CLIP as "".
    expect(() => checkPrompt(tokenizer, "<|endoftext|>")).toThrow("the prompt is empty");
    expect(() => checkPrompt(tokenizer, "<|startoftext|> <|endoftext|>")).toThrow("the prompt is empty");
    expect(checkPrompt(tokenizer, "!")).toBe("!");
    const long = Array.from({ length: 90 }, (_, i) => ["red", "cat", "big", "dog"][i % 4]).join(" ");
    let message = "";
    try {
      checkPrompt(tokenizer, long);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(
      /longer than the 75 tokens CLIP reads: it would be cut after "…?[a-z ]+", dropping "[a-z ]+"/,
    );
    // The cut is where the tokenizer says: the kept words fit, one more does not.
    const dropped = Number(/\((\d+) of 90 words\)/.exec(message)?.[1]);
    expect(dropped).toBeGreaterThan(0);
    expect(
      tokenizer.encode(
        long
          .split(" ")
          .slice(0, 90 - dropped)
          .join(" "),
      ).truncated,
    ).toBe(false);
    expect(
      tokenizer.encode(
        long
          .split(" ")
          .slice(0, 91 - dropped)
          .join(" "),
      ).truncated,
    ).toBe(true);
    expect(() => checkPrompt(tokenizer, "x".repeat(501))).toThrow(
      "the prompt is 501 characters; the limit is 500",
    );
    expect(checkPrompt(tokenizer, "  a  photo\nof a dog ")).toBe("a photo of a dog");
  });
});
