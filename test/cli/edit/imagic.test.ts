import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { deserializeState } from "../../../src/engine/pipelines/imagic-state.js";
import { runCli } from "../run-cli.js";

const CHELSEA = path.resolve("test/fixtures/images/chelsea.png");
/** 600×400: a 3:2 landscape photo. */
const COFFEE = path.resolve("test/fixtures/images/coffee.png");
const tmp = () => mkdtempSync(path.join(tmpdir(), "imagic-cli-"));

describe("edit imagic", () => {
  it("refuses bad input with one clear line and writes nothing", async () => {
    const dir = tmp();
    const text = path.join(dir, "notes.png");
    writeFileSync(text, "not a picture");
    const panorama = path.join(dir, "panorama.png");
    writeFileSync(panorama, await sharp(CHELSEA).resize(1000, 200, { fit: "fill" }).png().toBuffer());
    const out = path.join(dir, "out");
    const base = ["edit", "imagic", "--device", "cpu", "--out", out];
    const cases: Array<[string[], RegExp]> = [
      [["--image", text, "--prompt", "a dog"], /--image .*notes\.png: That file is a text file; send a JPEG/],
      [
        ["--image", path.join(dir, "missing.jpg"), "--prompt", "a dog"],
        /cannot read --image .*missing\.jpg: no such file/,
      ],
      [["--image", CHELSEA, "--prompt", "  "], /the prompt is empty/],
      [["--image", CHELSEA, "--prompt", "a dog", "--eta", "0.5,1.7"], /η .*≤ 1.5 \(got 1.7\)/],
      [
        [
          "--image",
          CHELSEA,
          "--prompt",
          "a dog",
          "--seeds",
          Array.from({ length: 17 }, (_, i) => i).join(","),
        ],
        /give 1 to 16 seeds \(got 17\)/,
      ],
      [
        ["--image", CHELSEA, "--prompt", "a dog", "--embedding-steps", "9000"],
        /embedding steps must be a whole number from 0 to 5000 \(got 9000\)/,
      ],
      [
        ["--image", CHELSEA, "--prompt", "a dog", "--size", "100x900"],
        /--size 100×900 has an aspect ratio of 9\.00:1; the limit is 4:1/,
      ],
      [
        ["--image", panorama, "--prompt", "a dog"],
        /--image .*panorama\.png is 1000×200 pixels, an aspect ratio of 5\.00:1; the limit is 4:1/,
      ],
      [
        ["--image", CHELSEA, "--prompt", "a dog", "--finetune", "full", "--lora-rank", "4"],
        /--lora-rank and --lora-alpha apply to --finetune lora, not full/,
      ],
      [
        ["--image", CHELSEA, "--prompt", "a dog", "--full-weights", "attention"],
        /--full-weights applies to --finetune full/,
      ],
    ];
    const results = await Promise.all(cases.map(([args]) => runCli([...base, ...args])));
    results.forEach((r, i) => {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch((cases[i] as [string[], RegExp])[1]);
      expect(r.stderr).not.toMatch(/^\s+at .*\.[jt]s:\d+:\d+/m); // no JavaScript stack trace
    });
    expect(existsSync(out)).toBe(false);
  }, 120_000); // ten CLI processes at once, each loading the CLI

  it("trains on a 3:2 photo, renders η × seeds, writes 3:2 images, grids, state and report; then renders again from the state, upscaled", async () => {
    const out = path.join(tmp(), "run");
    const r = await runCli([
      "edit",
      "imagic",
      "--device",
      "cpu",
      "--image",
      COFFEE,
      "--prompt",
      "a photo of a cat wearing a hat",
      "--preset",
      "fast",
      "--embedding-steps",
      "3",
      "--finetune-steps",
      "2",
      "--batch",
      "2",
      "--lora-rank",
      "2",
      "--ddim-steps",
      "2",
      "--eta",
      "0.5,1.2",
      "--seeds",
      "3,4",
      "--out",
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/tiny TEST checkpoint/);
    expect(readdirSync(out).sort()).toEqual(
      [
        "eta-0.5-seed-3.png",
        "eta-0.5-seed-4.png",
        "eta-1.2-seed-3.png",
        "eta-1.2-seed-4.png",
        "grid.png",
        "report.json",
        "seeds-eta-0.5.png",
        "seeds-eta-1.2.png",
        "state.safetensors",
        "sweep-seed-3.png",
        "sweep-seed-4.png",
      ].sort(),
    );
    // The fixture's 64² pixel count at 3:2: the photo is 64×43 of a 64×64 working image (src/spec/shape.ts).
    for (const name of ["eta-0.5-seed-3.png", "eta-1.2-seed-4.png"]) {
      expect(await sharp(path.join(out, name)).metadata(), name).toMatchObject({ width: 64, height: 43 });
    }
    // Grids of 3:2 tiles with 4-pixel gaps: two seeds side by side, or 2 η × 2 seeds.
    expect(await sharp(path.join(out, "seeds-eta-1.2.png")).metadata()).toMatchObject({
      width: 140,
      height: 51,
    });
    expect(await sharp(path.join(out, "grid.png")).metadata()).toMatchObject({ width: 140, height: 98 });
    const report = JSON.parse(readFileSync(path.join(out, "report.json"), "utf8"));
    expect(report).toMatchObject({
      workingSize: { width: 64, height: 64 },
      content: { left: 0, top: 10, width: 64, height: 43 },
      photoSize: { width: 600, height: 400 },
      imageSize: { width: 64, height: 43 },
    });
    expect(report.losses.embedding).toHaveLength(3);
    expect(report.losses.finetune).toHaveLength(2);
    expect(report.options.finetune).toMatchObject({ steps: 2, batch: 2, loraRank: 2 });
    expect(report.render).toMatchObject({ etas: [0.5, 1.2], seeds: [3, 4], steps: 2 });
    for (const k of ["load", "encode", "embedding", "finetune", "render", "total"])
      expect(report.seconds[k]).toBeGreaterThan(0);
    const state = deserializeState(readFileSync(path.join(out, "state.safetensors")));
    expect(state.prompt).toBe("a photo of a cat wearing a hat");
    expect(report.stateBytes).toBe(readFileSync(path.join(out, "state.safetensors")).length);

    const again = path.join(tmp(), "again");
    const r2 = await runCli([
      "edit",
      "imagic",
      "--device",
      "cpu",
      "--state",
      path.join(out, "state.safetensors"),
      "--eta",
      "1.2",
      "--seeds",
      "4",
      "--ddim-steps",
      "2",
      "--upscale",
      "--out",
      again,
    ]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(readdirSync(again)).not.toContain("state.safetensors");
    // Same state, η, seed and steps: the first run's image, upscaled to the photo's 600×400 with lanczos3.
    const first = path.join(out, "eta-1.2-seed-4.png");
    const a = await sharp(first).resize(600, 400, { fit: "fill", kernel: "lanczos3" }).raw().toBuffer();
    const b = await sharp(path.join(again, "eta-1.2-seed-4.png")).raw().toBuffer();
    expect(await sharp(path.join(again, "eta-1.2-seed-4.png")).metadata()).toMatchObject({
      width: 600,
      height: 400,
    });
    expect(b.equals(a)).toBe(true);
  }, 150_000); // two CLI processes compiling their sessions: ~25 s of CPU, more on a busy machine

  it("--finetune full trains the attention weights at lr 2e-6 and saves their fp16 deltas; ENGINE_MAX_TRAIN_BYTES refuses", async () => {
    const dir = tmp();
    const args = (out: string) => [
      "edit",
      "imagic",
      "--device",
      "cpu",
      "--image",
      CHELSEA,
      "--prompt",
      "a photo of a cat",
      "--size",
      "64",
      "--finetune",
      "full",
      "--full-weights",
      "attention",
      "--embedding-steps",
      "1",
      "--finetune-steps",
      "2",
      "--batch",
      "1",
      "--ddim-steps",
      "1",
      "--eta",
      "1",
      "--seeds",
      "1",
      "--out",
      out,
    ];
    const refused = await runCli(args(path.join(dir, "refused")), { ENGINE_MAX_TRAIN_BYTES: "64KiB" });
    expect(refused.code, refused.stderr).toBe(1);
    expect(refused.stderr).toMatch(
      /needs about .* more than the training memory limit of 64\.0 KiB \(ENGINE_MAX_TRAIN_BYTES\)/,
    );
    expect(refused.stderr).not.toMatch(/^\s+at .*\.[jt]s:\d+:\d+/m);

    const out = path.join(dir, "full");
    const r = await runCli(args(out));
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(readFileSync(path.join(out, "report.json"), "utf8"));
    expect(report.options.finetune).toMatchObject({
      method: "full",
      weights: "attention",
      lr: 2e-6,
      steps: 2,
    });
    const state = deserializeState(readFileSync(path.join(out, "state.safetensors")));
    expect(state.lora).toBeNull();
    expect(state.unetDelta?.size).toBeGreaterThan(0);
    expect([...(state.unetDelta?.keys() ?? [])].every((n) => n.includes(".attentions."))).toBe(true);
  }, 120_000);
});
