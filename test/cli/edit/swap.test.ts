// `edit swap` and `edit concept` as a user runs them, on the tiny fixture checkpoint: bad input refused
// with one line before anything is learned or written; a swap that learns its concept (null-text
// inversion), then one from that concept file (direct inversion) with a second subject's concept file
// (--also), at a forced --size; a concept learned alone.
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { deserializeConcept, serializeConcept } from "../../../src/engine/pipelines/concept-file.js";
import { conceptOptions } from "../../../src/spec/swap.js";
import { runCli } from "../run-cli.js";

/** 451×300: a 3:2 photo of a cat. */
const CHELSEA = path.resolve("test/fixtures/images/chelsea.png");
const COFFEE = path.resolve("test/fixtures/images/coffee.png");
const tmp = () => mkdtempSync(path.join(tmpdir(), "swap-cli-"));
/** The shortest concept learning there is: what these tests check is the wiring, not the subject. */
const QUICK = ["--concept-steps", "2", "--no-prior"];

describe("edit swap", () => {
  it("refuses bad input with one clear line and writes nothing", async () => {
    const dir = tmp();
    const text = path.join(dir, "notes.png");
    writeFileSync(text, "not a picture");
    const foreign = path.join(dir, "foreign.safetensors");
    writeFileSync(
      foreign,
      serializeConcept({
        token: "sks",
        tokenId: 48136,
        subject: "dog",
        modelId: "someone/another-model",
        contextDim: 16,
        options: conceptOptions("fast"),
        references: 1,
        losses: [0.5],
      }),
    );
    const out = path.join(dir, "out");
    const base = ["edit", "swap", "--device", "cpu", "--out", out, "--source", CHELSEA, "--subject", "cat"];
    const cases: Array<[string[], RegExp]> = [
      [[], /give 1 to 5 reference photos of the new subject \(--ref, repeated\); got 0/],
      [Array.from({ length: 6 }, () => ["--ref", COFFEE]).flat(), /give 1 to 5 reference photos .* got 6/],
      [["--ref", text], /--ref .*notes\.png: That file is a text file; send a JPEG/],
      [
        ["--ref", COFFEE, "--source-prompt", "a photo of a cat, sleeping"],
        /the subject "cat" is not a word of the source prompt/,
      ],
      [
        ["--ref", COFFEE, "--steps", "20", "--lambda-m", "25"],
        /--lambda-m takes whole numbers from 0 to 20 \(got 25\)/,
      ],
      [["--ref", COFFEE, "--seeds", "1,2,3,4,5,6", "--lambda-phi", "1,2,3"], /18 variants; the limit is 16/],
      [["--ref", COFFEE, "--concept", foreign], /--concept is a learned subject: leave out --ref/],
      [["--concept", text], /cannot read|not a usable concept file/],
      [["--concept", foreign], /this concept was learned on model "someone\/another-model"/],
      [
        ["--ref", COFFEE, "--source-prompt", `a cat ${"and a dog ".repeat(30)}`],
        /the source prompt ".*" is longer than the 75 tokens the text encoder reads/,
      ],
      [["--ref", COFFEE, "--token", "zwx"], /the concept token "zwx" is 2 tokens/],
      [
        ["--ref", COFFEE, "--also", "photo"],
        /--also takes word=concept-file, e\.g\. "sofa=chair\.safetensors"/,
      ],
      [["--ref", COFFEE, "--also", `cat=${foreign}`], /the subject "cat" is named twice/],
      [["--ref", COFFEE, "--subject", "hot dog"], /--subject must be one word, what the photo shows/],
      [
        ["--ref", COFFEE, "--size", "100x900"],
        /--size 100×900 has an aspect ratio of 9\.00:1; the limit is 4:1/,
      ],
      [
        ["--ref", COFFEE, "--size", "32"],
        /--size 32×32: each side must be a whole number of pixels from 64 to 2048/,
      ],
      [
        ["--ref", COFFEE, "--also", `photo=${foreign}`],
        /this concept was learned on model "someone\/another-model"/,
      ],
    ];
    const results = await Promise.all(cases.map(([args]) => runCli([...base, ...args])));
    results.forEach((r, i) => {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch((cases[i] as [string[], RegExp])[1]);
      expect(r.stderr).not.toMatch(/^\s+at .*\.[jt]s:\d+:\d+/m);
    });
    const noSource = await runCli([
      "edit",
      "swap",
      "--device",
      "cpu",
      "--out",
      out,
      "--source",
      text,
      "--subject",
      "cat",
      "--ref",
      COFFEE,
    ]);
    expect(noSource.stderr).toMatch(/--source .*notes\.png: That file is a text file; send a JPEG/);
    expect(existsSync(out)).toBe(false);
  }, 180_000);

  it("learns the concept, inverts with null-text, writes every variant at the photo's shape; then swaps from the concept file, with a second subject", async () => {
    const out = path.join(tmp(), "run");
    // A second subject's concept, learned meanwhile under its own token.
    const chair = path.join(tmp(), "chair.safetensors");
    const learnChair = runCli([
      "edit",
      "concept",
      "--device",
      "cpu",
      "--ref",
      CHELSEA,
      "--subject",
      "chair",
      "--token",
      "olis",
      ...QUICK,
      "--out",
      chair,
    ]);
    const r = await runCli([
      "edit",
      "swap",
      "--device",
      "cpu",
      "--source",
      CHELSEA,
      "--subject",
      "cat",
      "--ref",
      COFFEE,
      "--ref-subject",
      "cup",
      ...QUICK,
      "--inversion",
      "null-text",
      "--null-text-inner",
      "1",
      "--steps",
      "3",
      "--seeds",
      "0,5",
      "--lambda-phi",
      "1,2",
      "--lambda-m",
      "2",
      "--lambda-a",
      "1",
      "--out",
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /wrote the reconstruction \(PSNR [\d.]+ dB\), 4 swap\(s\), grid\.png, concept\.safetensors and report\.json/,
    );
    expect(readdirSync(out).sort()).toEqual(
      [
        "concept.safetensors",
        "grid.png",
        "reconstruction.png",
        "report.json",
        "swap-1-seed-0-phi1-m2-a1.png",
        "swap-2-seed-5-phi1-m2-a1.png",
        "swap-3-seed-0-phi2-m2-a1.png",
        "swap-4-seed-5-phi2-m2-a1.png",
      ].sort(),
    );
    for (const name of ["reconstruction.png", "swap-4-seed-5-phi2-m2-a1.png"])
      expect(await sharp(path.join(out, name)).metadata(), name).toMatchObject({ width: 64, height: 43 });
    const report = JSON.parse(readFileSync(path.join(out, "report.json"), "utf8"));
    expect(report).toMatchObject({
      sourcePrompt: "a photo of a cat",
      targetPrompt: "a photo of a sks cup",
      concept: { learned: true, token: "sks", subject: "cup", references: 1 },
      inversion: { method: "null-text", innerSteps: 1 },
      sampling: { steps: 3 },
    });
    expect(report.concept.losses).toHaveLength(2);
    expect(report.psnr.reconstruction).toBeGreaterThan(0);
    // Strength-major, as the grid shows them: one row per strength, one column per seed.
    expect(report.variants.map((v: { label: string }) => v.label)).toEqual([
      "seed 0 · φ1 M2 A1",
      "seed 5 · φ1 M2 A1",
      "seed 0 · φ2 M2 A1",
      "seed 5 · φ2 M2 A1",
    ]);

    const learned = await learnChair;
    expect(learned.code, learned.stderr).toBe(0);
    const again = path.join(tmp(), "again");
    const r2 = await runCli([
      "edit",
      "swap",
      "--device",
      "cpu",
      "--source",
      CHELSEA,
      "--subject",
      "cat",
      "--concept",
      path.join(out, "concept.safetensors"),
      "--source-prompt",
      "a cat on a sofa",
      "--also",
      `sofa=${chair}`,
      "--steps",
      "2",
      "--seeds",
      "1",
      "--size",
      "64x96",
      "--out",
      again,
    ]);
    expect(r2.code, r2.stderr).toBe(0);
    // --size 64x96 (portrait; the photo is 3:2 landscape): the photo covers it, and every image has that shape.
    for (const name of ["reconstruction.png", "swap-1-seed-1-phi2-m2-a2.png", "grid.png"]) {
      const image = await sharp(path.join(again, name)).metadata();
      expect([image.width, image.height], name).toEqual(name === "grid.png" ? [64 + 8, 96 + 8] : [64, 96]);
    }
    const report2 = JSON.parse(readFileSync(path.join(again, "report.json"), "utf8"));
    // Direct inversion gives the photo back exactly: the reconstruction is the encoded photo itself.
    // Both subjects swapped in one target prompt, each for its own concept's token.
    expect(report2).toMatchObject({
      sourcePrompt: "a cat on a sofa",
      targetPrompt: "a sks cup on a olis chair",
      concept: { learned: false, subject: "cup" },
      others: [{ word: "sofa", file: chair, token: "olis", subject: "chair" }],
      psnr: { reconstruction: "exact" },
      // Worked at 64×128 (the fixture's sides are multiples of 64): 96 rows of photo, padding cropped back.
      source: { working: { width: 64, height: 128, content: { left: 0, top: 16, width: 64, height: 96 } } },
    });
    expect(report2.variants.map((v: { label: string }) => v.label)).toEqual(["seed 1 · φ2 M2 A2"]);
    expect(readdirSync(again)).not.toContain("concept.safetensors");
  }, 240_000);
});

describe("edit concept", () => {
  it("learns a subject from a reference and writes a concept file that loads", async () => {
    const file = path.join(tmp(), "dog.safetensors");
    const r = await runCli([
      "edit",
      "concept",
      "--device",
      "cpu",
      "--ref",
      COFFEE,
      "--subject",
      "dog",
      ...QUICK,
      "--out",
      file,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote the concept "sks dog" \(1 reference photo\(s\), 2 steps, loss .* → .*\)/);
    const concept = deserializeConcept(readFileSync(file));
    expect(concept).toMatchObject({ token: "sks", subject: "dog", references: 1 });
    expect(concept.lora?.size).toBeGreaterThan(0);
  }, 120_000);
});
