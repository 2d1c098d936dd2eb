/**
 * The token mapper and word indices (photoswap-tokens.ts) beyond the reference's own cases (those are
 * checked in test/engine/photoswap-parity.test.ts): the alignment's tie order, several subjects in one
 * prompt, words of several tokens, and prompts the mapper cannot take.
 */
import { describe, expect, it } from "vitest";
import { ClipTokenizer } from "../../../src/engine/models/tokenizer.js";
import { alignTokens, promptTokens, wordIndices } from "../../../src/engine/pipelines/photoswap-tokens.js";
import { UserFacingError } from "../../../src/errors.js";

const tok = ClipTokenizer.fromFolder("test/fixtures/models/sd1/model/tokenizer");

describe("Photoswap token mapper", () => {
  it("pairs identical tokens only; a substitution is a deletion plus an insertion", () => {
    // bos a b c eos → bos a x c eos: b is dropped, x keeps its own map.
    const m = alignTokens([0, 1, 2, 3, 9], [0, 1, 7, 3, 9], 8);
    expect(m.mapper).toEqual([0, 1, -1, 3, 4, 5, 6, 7]);
    expect(m.alphas).toEqual([1, 1, 0, 1, 1, 1, 1, 1]);
  });

  it("prefers a target token of its own over dropping a source one when both score the same", () => {
    // a a → a: the target's one "a" aligns with the first source "a" (the second is dropped), PHOTOSWAP.md §5.
    expect(alignTokens([0, 5, 5, 9], [0, 5, 9], 4).mapper).toEqual([0, 1, 3, 3]);
  });

  it("maps each unchanged word of a two-subject swap to itself, shifted by the inserted tokens", () => {
    const source = promptTokens(tok, "a cat and a dog on grass", "source prompt");
    const target = promptTokens(tok, "a sks cat and a sks dog on grass", "target prompt");
    const { mapper, alphas } = alignTokens(source, target);
    // bos a [sks] cat and a [sks] dog on grass eos
    expect(mapper.slice(0, 11)).toEqual([0, 1, -1, 2, 3, 4, -1, 5, 6, 7, 8]);
    expect(alphas.slice(0, 11)).toEqual([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1]);
    expect(mapper.slice(11)).toEqual(Array.from({ length: 66 }, (_, i) => 11 + i));
  });

  it("refuses a prompt longer than the text encoder reads, naming it", () => {
    const long = Array.from({ length: 80 }, () => "cat").join(" ");
    expect(() => promptTokens(tok, long, "source prompt")).toThrow(UserFacingError);
    expect(() => promptTokens(tok, long, "source prompt")).toThrow(
      /source prompt .* longer than the 75 tokens/,
    );
  });
});

describe("Photoswap word indices", () => {
  it("decodes a token as CLIPTokenizer.decode([id]) does", () => {
    const [cat] = tok.tokenize("cat");
    expect(tok.decodeToken(cat as number)).toBe("cat");
    expect(tok.decodeToken(tok.bosId)).toBe("<|startoftext|>");
  });

  it("finds every token of every exact occurrence of the word, and nothing for a word with punctuation", () => {
    expect(wordIndices(tok, "a cat and a cat", "cat")).toEqual([2, 5]);
    expect(wordIndices(tok, "A photo of a woman, smiling", "woman")).toEqual([]);
    expect(wordIndices(tok, "A photo of a woman, smiling", "woman,")).toEqual([5, 6]);
    // A word of several BPE tokens: all of them.
    const ids = tok.tokenize("a photo of a xylophonist");
    const parts = ids.length - 4;
    expect(parts).toBeGreaterThan(1);
    expect(wordIndices(tok, "a photo of a xylophonist", "xylophonist")).toEqual(
      Array.from({ length: parts }, (_, i) => 5 + i),
    );
  });

  it("finds the word's own tokens after a character BPE splits into bytes", () => {
    // 猫 is three byte tokens (each decodes to one "�"): bos a 猫 猫 猫 on a sofa eos.
    expect(wordIndices(tok, "a 猫 on a sofa", "sofa")).toEqual([7]);
    expect(wordIndices(tok, "a photo of a 猫", "猫")).toEqual([5, 6, 7]);
    // ﬁ is three byte tokens too: bos a ﬁ ﬁ ﬁ sh and a cat eos — the whole word, then the next one's own.
    expect(wordIndices(tok, "a ﬁsh and a cat", "ﬁsh")).toEqual([2, 3, 4, 5]);
    expect(wordIndices(tok, "a ﬁsh and a cat", "cat")).toEqual([8]);
  });
});
