import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { runCli } from "./run-cli.js";

describe("demo", () => {
  it("runs an Imagic edit of the sample photo through the queue and a worker, then a picked tile's η sweep", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "imagic-demo-"));
    const out = path.join(dir, "out");
    const r = await runCli(
      [
        "demo",
        "--seeds",
        "1,2",
        "--pick",
        "2",
        "--embedding-steps",
        "2",
        "--finetune-steps",
        "2",
        "--ddim-steps",
        "2",
        "--size",
        "96x64",
        "--out",
        out,
      ],
      { STATE_DIR: path.join(dir, "state"), ENGINE_DEVICE: "cpu", ENGINE_DTYPE: "fp32" },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/tiny TEST checkpoint, whose images are NOISE/);
    expect(r.stderr).toMatch(/embedding 2\/2/);
    expect(r.stdout).toMatch(/wrote \d+ files to .*sweep-seed-2\.png: η 0\.6 → 1\.4/);
    expect(readdirSync(out).sort()).toEqual(
      [
        "grid.png",
        "eta-1-seed-1.png",
        "eta-1-seed-2.png",
        "sweep-seed-2.png",
        "eta-0.6-seed-2.png",
        "eta-0.8-seed-2.png",
        "eta-1.2-seed-2.png",
        "eta-1.4-seed-2.png",
      ].sort(),
    );
    // --size 96x64 reaches the job: every image is 96×64; the sweep is five such tiles in one row.
    for (const name of ["eta-1-seed-1.png", "eta-1.4-seed-2.png"]) {
      const image = await sharp(path.join(out, name)).metadata();
      expect([image.width, image.height]).toEqual([96, 64]);
    }
    const sweep = await sharp(path.join(out, "sweep-seed-2.png")).metadata();
    expect(sweep.width).toBeGreaterThan(5 * 96);
    expect(sweep.height).toBeLessThan(2 * 64);
  }, 180_000);

  it("swap: learns the subject, swaps it into the sample photo, keeps the pick, swaps again from the cache; a rerun at a forced --size", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "swap-demo-"));
    const out = path.join(dir, "out");
    const r = await runCli(
      ["demo", "swap", "--seeds", "0,1", "--pick", "2", "--concept-steps", "2", "--steps", "3", "--out", out],
      { STATE_DIR: path.join(dir, "state"), ENGINE_DEVICE: "cpu", ENGINE_DTYPE: "fp32" },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/tiny TEST checkpoint, whose images are NOISE/);
    expect(r.stderr).toMatch(/concept 2\/2/);
    // The second swap: no concept learning, no inversion (both cached), straight to the swap.
    const second = r.stderr.slice(r.stderr.indexOf("swap.edit again"));
    expect(second).toMatch(/swap 3\/3/);
    expect(second).not.toMatch(/concept \d|invert \d/);
    expect(r.stdout).toMatch(/wrote 5 files to .*final\.png: variant 2/);
    expect(r.stdout).toMatch(/the first swap took [^(]+ \(concept learning included\)/);
    expect(readdirSync(out).sort()).toEqual(
      ["final.png", "grid-again.png", "grid.png", "swap-1-seed-0.png", "swap-2-seed-1.png"].sort(),
    );
    const unsized = await sharp(path.join(out, "swap-1-seed-0.png")).metadata();
    expect([unsized.width, unsized.height]).toEqual([64, 43]);
    // Run again on the same state: the concept learned above is in STATE_DIR's Redis, and says so.
    const rerun = await runCli(
      [
        "demo",
        "swap",
        "--seeds",
        "0",
        "--concept-steps",
        "2",
        "--steps",
        "3",
        "--size",
        "64x96",
        "--out",
        path.join(dir, "rerun"),
      ],
      { STATE_DIR: path.join(dir, "state"), ENGINE_DEVICE: "cpu", ENGINE_DTYPE: "fp32" },
    );
    expect(rerun.code, rerun.stderr).toBe(0);
    expect(rerun.stderr).not.toMatch(/concept \d/);
    expect(rerun.stdout).toMatch(/\(its concept from the queue's cache: learned by an earlier run\)/);
    // --size 64x96 reaches the swap job: the variants come back 64×96 (the first run's were the photo's 64×43).
    for (const name of ["swap-1-seed-0.png", "final.png"]) {
      const image = await sharp(path.join(dir, "rerun", name)).metadata();
      expect([image.width, image.height], name).toEqual([64, 96]);
    }
  }, 240_000);

  it("refuses a pick that is not a tile, and a swap subject of two words, before starting anything", async () => {
    const r = await runCli(["demo", "--seeds", "1,2", "--pick", "3"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--pick must be a tile number from 1 to 2 \(got 3\)/);
    expect(r.stderr).not.toMatch(/redis/i);
    const swap = await runCli(["demo", "swap", "--seeds", "1,2", "--pick", "3"]);
    expect(swap.code).toBe(1);
    expect(swap.stderr).toMatch(/--pick must be a variant number from 1 to 2 \(got 3\)/);
    const twoWords = await runCli(["demo", "swap", "--subject", "tabby cat"]);
    expect(twoWords.code).toBe(1);
    expect(twoWords.stderr).toMatch(
      /--subject must be one word, what the photo shows \(e\.g\. "dog", not "tabby cat"\)/,
    );
    expect(twoWords.stderr).not.toMatch(/redis/i);
  });

  it("refuses a size it cannot serve before starting anything, naming the limit", async () => {
    for (const args of [["demo"], ["demo", "swap"]]) {
      const r = await runCli([...args, "--size", "100x900"]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/--size 100×900 has an aspect ratio of 9\.00:1; the limit is 4:1/);
      expect(r.stderr).not.toMatch(/redis/i);
    }
  });
});
