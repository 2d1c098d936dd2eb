import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ClipTokenizer } from "../../../src/engine/models/tokenizer.js";
import { fixtureDirs, loadGolden } from "../../helpers/golden.js";
import { modelFileErrorOf, scratchCopies } from "../../helpers/model-files.js";

const copy = scratchCopies("tokenizer-test-");
const SD1_TOKENIZER = "test/fixtures/models/sd1/model/tokenizer";
const copyTokenizer = (): string => copy(SD1_TOKENIZER);

describe.each(fixtureDirs())("ClipTokenizer on %s", (dir) => {
  const g = loadGolden(dir);
  const tokenizer = ClipTokenizer.fromFolder(join(g.modelDir, "tokenizer"));

  it("gives CLIPTokenizer's input_ids for every golden prompt", () => {
    g.json.prompts.forEach((prompt, i) => {
      expect(tokenizer.encode(prompt).ids, JSON.stringify(prompt)).toEqual(g.json.input_ids[i]);
    });
  });

  it("matches the ids the golden text-encoder pass was fed", () => {
    const ids = g.ints("text_encoder.input_ids");
    const n = ids.length / 77;
    for (let i = 0; i < n; i++) {
      expect(tokenizer.encode(g.json.prompts[i] as string).ids).toEqual(ids.slice(i * 77, (i + 1) * 77));
    }
  });

  it("reports truncation of over-long prompts only", () => {
    const encodings = g.json.prompts.map((p) => tokenizer.encode(p));
    const truncated = g.json.prompts.filter((_, i) => encodings[i]?.truncated);
    expect(truncated).toHaveLength(1);
    expect(truncated[0]).toMatch(/^a very very/);
    expect(tokenizer.encode("a photo of a cat")).toMatchObject({ truncated: false, length: 7 });
  });
});

describe("positionsOf", () => {
  const tokenizer = ClipTokenizer.fromFolder(SD1_TOKENIZER);
  const tokens = (text: string, positions: number[]) => {
    const ids = tokenizer.encode(text).ids;
    return positions.map((p) => ids[p]);
  };

  it("finds a word's tokens in the padded ids, as whole pieces only", () => {
    expect(tokenizer.positionsOf("a photo of a cat", "cat")).toEqual([5]);
    expect(tokenizer.positionsOf("A Cat and a cat's toy, not a catalogue", "CAT")).toEqual([2, 5]);
    expect(tokens("a photo of a cat", [5])).toEqual(tokenizer.tokenize("cat"));
  });

  it("covers words split into several BPE tokens, and multi-word phrases", () => {
    const text = "a newline and a teddy bear on the newline";
    const nl = tokenizer.positionsOf(text, "newline");
    expect(nl).toHaveLength(4); // "new" + "line", twice
    expect(tokens(text, nl.slice(0, 2))).toEqual(tokenizer.tokenize("newline"));
    const teddy = tokenizer.positionsOf(text, "teddy bear");
    expect(tokens(text, teddy)).toEqual(tokenizer.tokenize("teddy bear"));
    expect(tokenizer.positionsOf(text, "bear teddy")).toEqual([]);
    expect(tokenizer.positionsOf(text, "  ")).toEqual([]);
  });

  it("leaves out positions lost to truncation", () => {
    const long = `${"very ".repeat(80)}cat`;
    expect(tokenizer.positionsOf(long, "cat")).toEqual([]);
    expect(tokenizer.positionsOf(long, "very")).toHaveLength(75);
  });
});

describe("special tokens from tokenizer_config.json and special_tokens_map.json", () => {
  const SD2_TOKENIZER = "test/fixtures/models/sd2/model/tokenizer";
  const AS_SD21 = {
    // stabilityai/stable-diffusion-2-1's tokenizer_config.json (legacy format: no added_tokens_decoder).
    bos_token: { __type: "AddedToken", content: "<|startoftext|>", lstrip: false, normalized: true },
    eos_token: { __type: "AddedToken", content: "<|endoftext|>", lstrip: false, normalized: true },
    model_max_length: 77,
    pad_token: "<|endoftext|>",
    special_tokens_map_file: "./special_tokens_map.json",
    tokenizer_class: "CLIPTokenizer",
  };

  it("lets special_tokens_map.json override a legacy tokenizer_config.json, as transformers does (SD 2.x pads with !)", () => {
    const dir = copy(SD2_TOKENIZER);
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(AS_SD21));
    const ids = ClipTokenizer.fromFolder(dir).encode("a photo of a cat").ids;
    expect(ids.slice(6, 9)).toEqual([49407, 0, 0]);
    expect(ids).toEqual(ClipTokenizer.fromFolder(SD2_TOKENIZER).encode("a photo of a cat").ids);
  });

  it("splits SD 2.x's pad token '!' out of a prompt as transformers splits every special token", () => {
    const sd2 = ClipTokenizer.fromFolder(SD2_TOKENIZER);
    const sd1 = ClipTokenizer.fromFolder(SD1_TOKENIZER);
    // diffusers issue 4153: "! !! !!!" through SD 2's CLIPTokenizer is six ids 0 between bos and eos.
    expect(sd2.encode("! !! !!!").ids.slice(0, 9)).toEqual([49406, 0, 0, 0, 0, 0, 0, 49407, 0]);
    // "!" alone is "!</w>" (256) to BPE, the pad token (0) to SD 2's tokenizer; SD 1 pads with
    // <|endoftext|> and so tokenizes it by BPE.
    expect(sd2.encode("a cat!").ids.slice(0, 6)).toEqual([49406, 320, 2368, 0, 49407, 0]);
    expect(sd1.encode("a cat!").ids.slice(0, 6)).toEqual([49406, 320, 2368, 256, 49407, 49407]);
    expect(sd1.encode("a cat!!").ids.slice(0, 5)).toEqual([49406, 320, 2368, sd1.tokenize("!!")[0], 49407]);
  });

  it("takes a tokenizer_config.json with added_tokens_decoder (transformers >= 4.34) as final", () => {
    const dir = copy(SD2_TOKENIZER);
    writeFileSync(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({ ...AS_SD21, added_tokens_decoder: {} }),
    );
    expect(ClipTokenizer.fromFolder(dir).encode("a photo of a cat").ids.slice(6, 9)).toEqual([
      49407, 49407, 49407,
    ]);
  });
});

describe("added tokens (textual inversion's placeholders saved with the pipeline)", () => {
  const reference = ClipTokenizer.fromFolder(SD1_TOKENIZER);
  const prompt = "a photo of a <cat-toy> toy, A <Cat-Toy>s";
  // transformers splits them out of the (normalized) text whole, each as its own id.
  const expected = [
    49406,
    ...reference.tokenize("a photo of a"),
    49408,
    ...reference.tokenize("toy, a"),
    49408,
    ...reference.tokenize("s"),
    49407,
  ];

  it("reads them from added_tokens.json, tokenizer_config.json's added_tokens_decoder (first) and tokenizer.json", () => {
    expect(reference.tokenize("<cat-toy>")).not.toEqual([49408]);
    const legacy = copyTokenizer();
    writeFileSync(join(legacy, "added_tokens.json"), JSON.stringify({ "<cat-toy>": 49408 }));
    const tok = ClipTokenizer.fromFolder(legacy);
    expect(tok.encode(prompt).ids.slice(0, expected.length)).toEqual(expected);
    expect(tok.decodeToken(49408)).toBe("<cat-toy>");
    expect(tok.positionsOf(prompt, "<cat-toy>")).toEqual([5, 9]);

    const modern = copyTokenizer();
    writeFileSync(join(modern, "added_tokens.json"), JSON.stringify({ "<cat-toy>": 49409 }));
    const config = JSON.parse(readFileSync(join(modern, "tokenizer_config.json"), "utf8"));
    const added = { content: "<cat-toy>", lstrip: false, normalized: true, rstrip: false, special: false };
    config.added_tokens_decoder = { "49408": added };
    writeFileSync(join(modern, "tokenizer_config.json"), JSON.stringify(config));
    expect(ClipTokenizer.fromFolder(modern).encode(prompt).ids.slice(0, expected.length)).toEqual(expected);

    const fast = copyTokenizer();
    const vocab = JSON.parse(readFileSync(join(fast, "vocab.json"), "utf8"));
    const merges = readFileSync(join(fast, "merges.txt"), "utf8").split("\n").slice(1).filter(Boolean);
    writeFileSync(
      join(fast, "tokenizer.json"),
      JSON.stringify({ added_tokens: [{ id: 49408, ...added }], model: { type: "BPE", vocab, merges } }),
    );
    expect(ClipTokenizer.fromFolder(fast).encode(prompt).ids.slice(0, expected.length)).toEqual(expected);
  });

  it("names the file of a malformed added token", () => {
    const dir = copyTokenizer();
    writeFileSync(join(dir, "added_tokens.json"), JSON.stringify({ "<cat-toy>": "one" }));
    const e = modelFileErrorOf(() => ClipTokenizer.fromFolder(dir));
    expect(e.file).toBe(join(dir, "added_tokens.json"));
    expect(e.message).toMatch(/"<cat-toy>" is not an added token \(content "<cat-toy>", id "one"\)/);
  });
});

describe("ClipTokenizer from tokenizer.json", () => {
  it("gives the same ids as vocab.json + merges.txt", () => {
    const dir = copyTokenizer();
    const vocab = JSON.parse(readFileSync(join(dir, "vocab.json"), "utf8"));
    const merges = readFileSync(join(dir, "merges.txt"), "utf8").split("\n").slice(1).filter(Boolean);
    // tokenizers ≥ 0.20 writes merges as pairs; older files as "a b" strings: use one of each.
    const written = merges.map((m, i) => (i % 2 ? m.split(" ") : m));
    writeFileSync(
      join(dir, "tokenizer.json"),
      JSON.stringify({ model: { type: "BPE", vocab, merges: written } }),
    );
    rmSync(join(dir, "merges.txt"));
    const fromJson = ClipTokenizer.fromFolder(dir);
    const reference = ClipTokenizer.fromFolder(SD1_TOKENIZER);
    const g = loadGolden(fixtureDirs()[0] as string);
    for (const prompt of g.json.prompts) expect(fromJson.encode(prompt)).toEqual(reference.encode(prompt));
  });
});

describe("damaged tokenizer files", () => {
  it("names vocab.json when it is not JSON or not a token → id map", () => {
    const dir = copyTokenizer();
    const vocabFile = join(dir, "vocab.json");
    writeFileSync(vocabFile, readFileSync(vocabFile, "utf8").slice(0, 5000));
    const e = modelFileErrorOf(() => ClipTokenizer.fromFolder(dir));
    expect(e.file).toBe(vocabFile);
    expect(e.message).toMatch(/is not valid JSON/);
    writeFileSync(vocabFile, JSON.stringify({ a: "zero" }));
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toMatch(/token "a" has id "zero"/);
  });

  it("names merges.txt and the line when a merge is malformed or does not fit the vocabulary", () => {
    const dir = copyTokenizer();
    const mergesFile = join(dir, "merges.txt");
    const lines = readFileSync(mergesFile, "utf8").split("\n");
    writeFileSync(mergesFile, [...lines.slice(0, 10), "abc", ...lines.slice(10)].join("\n"));
    const e = modelFileErrorOf(() => ClipTokenizer.fromFolder(dir));
    expect(e.file).toBe(mergesFile);
    expect(e.message).toMatch(/line 11 is not a merge of two tokens: "abc"/);
    writeFileSync(mergesFile, [...lines.slice(0, 10), "qx zz", ...lines.slice(10)].join("\n"));
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toMatch(
      /line 11: merge "qx zz" makes "qxzz", which the vocabulary lacks/,
    );
    rmSync(mergesFile);
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toBe(
      `${mergesFile}: file not found`,
    );
  });

  it("names tokenizer.json when it is damaged or not a BPE tokenizer", () => {
    const dir = copyTokenizer();
    const file = join(dir, "tokenizer.json");
    writeFileSync(file, '{"model": {"type": "BPE", "vocab": {');
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir))).toMatchObject({
      file,
      message: expect.stringMatching(/is not valid JSON/),
    });
    writeFileSync(file, JSON.stringify({ model: { type: "WordPiece", vocab: { a: 0 } } }));
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toMatch(
      /model type "WordPiece" is not BPE/,
    );
    writeFileSync(file, JSON.stringify({ model: { type: "BPE", vocab: { a: 0 }, merges: [["a"]] } }));
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toMatch(
      /model\.merges\[0\] is not a pair of tokens/,
    );
  });

  it("names the file whose special token is missing from the vocabulary", () => {
    const dir = copyTokenizer();
    // Alone: a legacy tokenizer_config.json's tokens give way to special_tokens_map.json's.
    rmSync(join(dir, "special_tokens_map.json"));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ pad_token: { content: "<pad>" } }));
    expect(modelFileErrorOf(() => ClipTokenizer.fromFolder(dir)).message).toMatch(
      /the pad token "<pad>" is not in the vocabulary/,
    );
  });
});
