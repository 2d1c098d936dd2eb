import { describe, expect, it } from "vitest";
import type { CommandRequest, IncomingAttachment } from "../../src/commands/chat.js";
import { parseImagic, parseSeeds, parseSwap } from "../../src/commands/parse.js";
import { DEFAULT_SEED_COUNT } from "../../src/spec/request.js";

const file = (option: string): IncomingAttachment => ({
  option,
  filename: `${option}.png`,
  contentType: "image/png",
  size: 1000,
  url: `memory://${option}`,
});
const request = (
  command: string,
  options: CommandRequest["options"],
  attachments: IncomingAttachment[],
): CommandRequest => ({
  command,
  userId: "u1",
  conversation: { channel: "c1" },
  options,
  attachments,
});

describe("parseSeeds", () => {
  let next = 100;
  const counter = () => next++;

  it("reads a small number as a count of random seeds, and nothing as the default count", () => {
    next = 100;
    expect(parseSeeds("3", counter)).toEqual([100, 101, 102]);
    expect(parseSeeds(undefined, counter)).toHaveLength(DEFAULT_SEED_COUNT);
  });

  it("reads lists (commas or spaces, duplicates dropped) and a single seed written with a comma", () => {
    expect(parseSeeds("7, 42 7,1234", counter)).toEqual([7, 42, 1234]);
    expect(parseSeeds("5,", counter)).toEqual([5]);
    expect(parseSeeds("123456", counter)).toEqual([123456]);
  });

  it("names the limit when there are too many or they are not whole numbers", () => {
    expect(() => parseSeeds("1,2,3,4,5,6,7,8,9", counter)).toThrow("`seeds` lists 9 seeds; the limit is 8");
    expect(() => parseSeeds("1.5,2", counter)).toThrow(
      /`seeds` must be a count from 1 to 8 or whole numbers from 0 to 4294967295/,
    );
    expect(() => parseSeeds("4294967296,", counter)).toThrow(/got "4294967296,"/);
    expect(parseSeeds("0", counter)).toEqual([0]);
  });

  it("reads digits of any script (Arabic-Indic, fullwidth) as the digits they are", () => {
    next = 100;
    expect(parseSeeds("٣", counter)).toEqual([100, 101, 102]);
    expect(parseSeeds("٧, ٤٢", counter)).toEqual([7, 42]);
    expect(parseSeeds("１２３４,", counter)).toEqual([1234]);
  });

  it("reads past invisible characters pasted with the numbers", () => {
    expect(parseSeeds("7,\u200b42\u2060", counter)).toEqual([7, 42]);
    expect(parseSeeds("\ufeff1234\u200e", counter)).toEqual([1234]);
  });
});

describe("parseImagic", () => {
  it("tidies the prompt and reads preset and η", () => {
    const spec = parseImagic(
      request("imagic", { prompt: "  a   photo\nof a dog ", preset: "Fast", eta: 1.2, seeds: "9," }, [
        file("image"),
      ]),
    );
    expect(spec).toMatchObject({ prompt: "a photo of a dog", preset: "fast", eta: 1.2, seeds: [9] });
    expect(spec.image.option).toBe("image");
  });

  it("refuses what is missing or out of bounds, naming the option and the limit", () => {
    expect(() => parseImagic(request("imagic", { prompt: "x" }, []))).toThrow("`image` is required");
    expect(() => parseImagic(request("imagic", { prompt: "   " }, [file("image")]))).toThrow(
      "`prompt` is empty",
    );
    expect(() => parseImagic(request("imagic", { prompt: "x".repeat(501) }, [file("image")]))).toThrow(
      "`prompt` is 501 characters; the limit is 500",
    );
    expect(() => parseImagic(request("imagic", { prompt: "x", preset: "turbo" }, [file("image")]))).toThrow(
      '`preset` must be one of fast, balanced, paper (got "turbo")',
    );
    expect(() => parseImagic(request("imagic", { prompt: "x", eta: -0.1 }, [file("image")]))).toThrow(
      "`eta` must be a number from 0 to 1.5 (got -0.1)",
    );
  });

  it("reads a prompt of only invisible characters as empty, and drops them from one with words", () => {
    const prompt = (p: string) => parseImagic(request("imagic", { prompt: p }, [file("image")])).prompt;
    // Zero-width space, BOM, bidi override and isolate, word joiner, NUL, BEL, soft hyphen.
    for (const invisible of ["\u200b\u200b", "\ufeff", "\u202e\u2066", "\u2060", "\u0000", "\u0007\u00ad"]) {
      expect(() => prompt(invisible), JSON.stringify(invisible)).toThrow("`prompt` is empty");
    }
    expect(prompt("a\u0000 photo\u200b of a \u202ecat\u0007")).toBe("a photo of a cat");
    // Emoji stay whole: the joiner and the variation selector hold a sequence together.
    expect(prompt("😀😀")).toBe("😀😀");
    expect(prompt("a 👩‍💻 and a ❤️")).toBe("a 👩‍💻 and a ❤️");
  });

  it("reads η as a decimal number: empty text and hex are refused, not read as 0 and 1", () => {
    const eta = (value: string) => () =>
      parseImagic(request("imagic", { prompt: "x", eta: value }, [file("image")]));
    // Slack's number inputs arrive as text; Number("") is 0, Number("0x1") is 1.
    expect(eta("")).toThrow('`eta` must be a number from 0 to 1.5 (got "")');
    expect(eta("  ")).toThrow('`eta` must be a number from 0 to 1.5 (got "")');
    expect(eta("0x1")).toThrow("`eta` must be a number from 0 to 1.5 (got 0x1)");
    expect(eta("1e309")).toThrow("`eta` must be a number from 0 to 1.5 (got 1e309)");
    expect(eta("Infinity")).toThrow("`eta` must be a number from 0 to 1.5 (got Infinity)");
    expect(eta(" .5 ")()).toMatchObject({ eta: 0.5 });
    expect(eta("٠.٧٥")()).toMatchObject({ eta: 0.75 });
    expect(eta("\u200b0.5\u200e")()).toMatchObject({ eta: 0.5 });
    expect(() =>
      parseImagic(request("imagic", { prompt: "x", preset: "fast\u200b" }, [file("image")])),
    ).not.toThrow();
  });
});

// /imagic's photo and /swap's source photo take the same `size`, read and refused alike.
describe.each([
  {
    command: "imagic",
    parse: (size?: string) =>
      parseImagic(request("imagic", { prompt: "x", ...(size ? { size } : {}) }, [file("image")])),
  },
  {
    command: "swap",
    parse: (size?: string) =>
      parseSwap(
        request("swap", { subject: "cat", ...(size ? { size } : {}) }, [file("source"), file("reference1")]),
      ),
  },
])("/$command `size`", ({ parse }) => {
  it("reads a forced size as a square or width×height, and none as the photo's own shape", () => {
    const sized = (size?: string) => parse(size).size;
    expect(sized()).toBeUndefined();
    expect(sized(" 512 ")).toEqual({ width: 512, height: 512 });
    expect(sized("768x512")).toEqual({ width: 768, height: 512 });
    expect(sized("512 × 768")).toEqual({ width: 512, height: 768 });
    expect(sized("٧٦٨x٥١٢")).toEqual({ width: 768, height: 512 });
    expect(sized("５１２")).toEqual({ width: 512, height: 512 });
    expect(sized("768\u200bx512\u2060")).toEqual({ width: 768, height: 512 });
  });

  it("refuses a size it cannot serve, naming the option and the limit", () => {
    const sized = (size: string) => () => parse(size);
    expect(sized("big")).toThrow('`size` must be a side ("512") or width×height ("768x512"), got "big"');
    expect(sized("100x900")).toThrow("`size` 100×900 has an aspect ratio of 9.00:1; the limit is 4:1");
    expect(sized("32")).toThrow("`size` 32×32: each side must be a whole number of pixels from 64 to 2048");
    expect(sized("2048x1024")).toThrow("`size` 2048×1024 is 2.10 megapixels; the limit is 1.05 (1024²)");
  });
});

describe("parseSwap", () => {
  it("collects the references in order, skipping gaps", () => {
    const spec = parseSwap(
      request("swap", { subject: "cat" }, [file("source"), file("reference3"), file("reference1")]),
    );
    expect(spec.references.map((r) => r.option)).toEqual(["reference1", "reference3"]);
    expect(spec.subject).toBe("cat");
  });

  it("needs a source, a subject and a first reference", () => {
    expect(() => parseSwap(request("swap", { subject: "cat" }, [file("reference1")]))).toThrow(
      "`source` is required",
    );
    expect(() => parseSwap(request("swap", {}, [file("source"), file("reference1")]))).toThrow(
      "`subject` is required",
    );
    expect(() => parseSwap(request("swap", { subject: "cat" }, [file("source")]))).toThrow(
      "`reference1` is required",
    );
    expect(() =>
      parseSwap(request("swap", { subject: "x".repeat(65) }, [file("source"), file("reference1")])),
    ).toThrow("`subject` is 65 characters; the limit is 64");
    // The source prompt is "a photo of a <subject>", where the swap finds the subject as one word.
    expect(() =>
      parseSwap(request("swap", { subject: " golden  retriever " }, [file("source"), file("reference1")])),
    ).toThrow(
      '`subject` must be one word, what the photo shows (e.g. "dog", not "golden retriever"): the swap finds it as a word of "a photo of a golden retriever"',
    );
  });

  it("refuses a second photo for one option and more references than it takes, instead of dropping them", () => {
    const refs = (n: number) => Array.from({ length: n }, (_, i) => file(`reference${i + 1}`));
    expect(() => parseSwap(request("swap", { subject: "cat" }, [file("source"), ...refs(6)]))).toThrow(
      "`reference1`…`reference5` take at most 5 photos; 6 were sent",
    );
    expect(() =>
      parseSwap(request("swap", { subject: "cat" }, [file("source"), file("source"), file("reference1")])),
    ).toThrow("`source` takes one photo; 2 were sent");
    expect(() =>
      parseSwap(
        request("swap", { subject: "cat" }, [file("source"), file("reference1"), file("reference1")]),
      ),
    ).toThrow("`reference1` takes one photo; 2 were sent");
    expect(() => parseImagic(request("imagic", { prompt: "x" }, [file("image"), file("image")]))).toThrow(
      "`image` takes one photo; 2 were sent",
    );
    expect(
      parseSwap(request("swap", { subject: "cat" }, [file("source"), ...refs(5)])).references,
    ).toHaveLength(5);
  });

  it("takes the swap strengths the user set, whole steps from 0 to 50, and leaves the rest to the defaults", () => {
    const files = [file("source"), file("reference1")];
    expect(parseSwap(request("swap", { subject: "cat" }, files)).strengths).toEqual({});
    expect(
      parseSwap(request("swap", { subject: "cat", self_map_steps: 40, cross_map_steps: 0 }, files)).strengths,
    ).toEqual({ selfMapSteps: 40, crossMapSteps: 0 });
    expect(() => parseSwap(request("swap", { subject: "cat", self_output_steps: 51 }, files))).toThrow(
      "`self_output_steps` must be a number from 0 to 50 (got 51)",
    );
    expect(() => parseSwap(request("swap", { subject: "cat", cross_map_steps: 2.5 }, files))).toThrow(
      "`cross_map_steps` must be a whole number of steps (got 2.5)",
    );
  });

  it("reads a strength as a decimal whole number: empty text and hex are refused, not read as 0 and 16", () => {
    const files = [file("source"), file("reference1")];
    const steps = (value: string) => () =>
      parseSwap(request("swap", { subject: "cat", self_map_steps: value }, files)).strengths;
    expect(steps("")).toThrow('`self_map_steps` must be a number from 0 to 50 (got "")');
    expect(steps("0x10")).toThrow("`self_map_steps` must be a number from 0 to 50 (got 0x10)");
    expect(steps(" 30 ")()).toEqual({ selfMapSteps: 30 });
    expect(steps("٣٠")()).toEqual({ selfMapSteps: 30 });
  });

  it("reads a subject of only invisible characters as empty, and drops them from a word", () => {
    const files = [file("source"), file("reference1")];
    const subject = (s: string) => parseSwap(request("swap", { subject: s }, files)).subject;
    expect(() => subject("\u200b")).toThrow("`subject` is empty");
    expect(() => subject("\u202e\u0000")).toThrow("`subject` is empty");
    expect(subject("c\u0000a\u200bt")).toBe("cat");
    expect(subject("🐈")).toBe("🐈");
  });

  it("refuses the concept token as the subject before anything is queued", () => {
    const files = [file("source"), file("reference1")];
    for (const word of ["sks", "SKS"]) {
      expect(() => parseSwap(request("swap", { subject: word }, files))).toThrow(
        `\`subject\` cannot be "${word}": I learn the new subject as "sks <subject>"; name what the photo shows (e.g. "dog")`,
      );
    }
    expect(parseSwap(request("swap", { subject: "skis" }, files)).subject).toBe("skis");
  });

  it("refuses a subject that is also another word of the prompt made from it", () => {
    const files = [file("source"), file("reference1")];
    for (const word of ["a", "photo", "of"]) {
      expect(() => parseSwap(request("swap", { subject: word }, files))).toThrow(
        `\`subject\` "${word}" is also another word of "a photo of a ${word}", where the swap finds it: name what the photo shows (e.g. "dog")`,
      );
    }
    expect(parseSwap(request("swap", { subject: "Photo" }, files)).subject).toBe("Photo");
  });

  it("reads `strengths` as φ/M/A step triples, one grid row each, in place of the single strengths", () => {
    const files = [file("source"), file("reference1")];
    const swap = (options: CommandRequest["options"]) =>
      parseSwap(request("swap", { subject: "cat", ...options }, files));
    const parsed = swap({ strengths: " 10/25/20, 5/15/10  0/0/50,10/25/20 ", seeds: "1,2" });
    // Commas or spaces between triples; a repeated triple counts once.
    expect(parsed.strengthList).toEqual([
      { selfOutputSteps: 10, selfMapSteps: 25, crossMapSteps: 20 },
      { selfOutputSteps: 5, selfMapSteps: 15, crossMapSteps: 10 },
      { selfOutputSteps: 0, selfMapSteps: 0, crossMapSteps: 50 },
    ]);
    expect(parsed.seeds).toEqual([1, 2]);
    expect(parsed.strengths).toEqual({});
    expect(swap({}).strengthList).toBeUndefined();
    // 16 variants is the limit: 1 seed × 16 strengths, 8 seeds × 2, 4 × 4 pass.
    const sixteen = Array.from({ length: 16 }, (_, i) => `${i}/0/0`).join(",");
    expect(swap({ strengths: sixteen, seeds: "7," }).strengthList).toHaveLength(16);
    expect(swap({ strengths: "1/1/1,2/2/2", seeds: "8" }).strengthList).toHaveLength(2);
    expect(swap({ strengths: "1/1/1,2/2/2,3/3/3,4/4/4" }).seeds).toHaveLength(4);
    // Spaces around the slashes, and digits of any script, read as written.
    expect(swap({ strengths: "10 / 25 / 20, ٥/١٥/١٠" }).strengthList).toEqual([
      { selfOutputSteps: 10, selfMapSteps: 25, crossMapSteps: 20 },
      { selfOutputSteps: 5, selfMapSteps: 15, crossMapSteps: 10 },
    ]);
  });

  it.each([
    ["", "`strengths` is empty: write a few words"],
    [" , ", '`strengths` is empty: give φ/M/A step triples separated by commas, e.g. "10/25/20,5/15/10"'],
    ["10/25", '`strengths`: "10/25" is not three whole step counts; give φ/M/A step triples'],
    ["10/25/20/5", '`strengths`: "10/25/20/5" is not three whole step counts'],
    ["10/25/2.5", '`strengths`: "10/25/2.5" is not three whole step counts'],
    ["10/-1/20", '`strengths`: "10/-1/20" is not three whole step counts'],
    ["10;25;20", '`strengths`: "10;25;20" is not three whole step counts'],
    ["a/b/c", '`strengths`: "a/b/c" is not three whole step counts'],
    [
      "10/25/20,5/51/10",
      '`strengths`: "5/51/10" asks for 51 steps; each step count is at most the 50 sampling steps',
    ],
    [
      Array.from({ length: 17 }, (_, i) => `${i}/0/0`).join(","),
      "`strengths` lists 17 strengths; the limit is 16",
    ],
    [
      "1/1/1,2/2/2,3/3/3,4/4/4,5/5/5",
      "`strengths` × `seeds`: 4 seed(s) × 5 strength(s) make 20 variants; the limit is 16",
    ],
    ["x".repeat(201), "`strengths` is 201 characters; the limit is 200"],
  ])("refuses strengths %j before anything is queued", (value, message) => {
    const files = [file("source"), file("reference1")];
    expect(() => parseSwap(request("swap", { subject: "cat", strengths: value }, files))).toThrow(message);
  });

  it("refuses `strengths` × `seeds` over 16 variants, and `strengths` together with a single strength", () => {
    const files = [file("source"), file("reference1")];
    const swap = (options: CommandRequest["options"]) => () =>
      parseSwap(request("swap", { subject: "cat", ...options }, files));
    expect(swap({ strengths: "1/1/1,2/2/2,3/3/3", seeds: "1,2,3,4,5,6" })).toThrow(
      "`strengths` × `seeds`: 6 seed(s) × 3 strength(s) make 18 variants; the limit is 16",
    );
    expect(swap({ strengths: "1/1/1", self_map_steps: 40 })).toThrow(
      "`strengths` gives every step count itself: leave `self_map_steps` out, or write it into `strengths`",
    );
  });
});
