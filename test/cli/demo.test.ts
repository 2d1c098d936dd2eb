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

  it("refuses a pick that is not a tile before starting anything", async () => {
    const r = await runCli(["demo", "--seeds", "1,2", "--pick", "3"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--pick must be a tile number from 1 to 2 \(got 3\)/);
    expect(r.stderr).not.toMatch(/redis/i);
  });

  it("refuses a size it cannot serve before starting anything, naming the limit", async () => {
    const r = await runCli(["demo", "--size", "100x900"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--size 100×900 has an aspect ratio of 9\.00:1; the limit is 4:1/);
    expect(r.stderr).not.toMatch(/redis/i);
  });
});
