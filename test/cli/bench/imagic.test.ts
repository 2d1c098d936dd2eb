import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../run-cli.js";

describe("bench imagic", () => {
  it("runs the whole Imagic path on a random-weight checkpoint, square and portrait, and extrapolates full schedules", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "bench-imagic-"));
    const json = path.join(dir, "result.json");
    const model = path.join(dir, "model");
    const r = await runCli([
      "bench",
      "imagic",
      "--tiny",
      "--device",
      "cpu",
      "--preset",
      "fast",
      "--steps-scale",
      "0.01",
      "--batches",
      "1,2",
      "--size",
      "64,64x128",
      "--model-dir",
      model,
      "--json",
      json,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/photo → first 4-seed grid: [\d.]+ s warm/);
    expect(readdirSync(model).sort()).toEqual(
      [".complete", "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"].sort(),
    );
    expect(r.stdout).toMatch(/— 64² \(latents 8×8\)[\s\S]*— 64×128 \(latents 8×16\)/);
    const result = JSON.parse(readFileSync(json, "utf8"));
    expect(result.sizes.map((s: { width: number; height: number }) => [s.width, s.height])).toEqual([
      [64, 64],
      [64, 128],
    ]);
    for (const entry of result.sizes) {
      const [row] = entry.presets;
      expect(row.preset).toBe("fast");
      // 1 % of the fast preset's 50 + 75 steps and 25 DDIM steps is below the floor of 5 steps per stage.
      expect(row.ran).toEqual({ embedding: 5, finetune: 5, render: 5 });
      for (const stage of ["embedding", "finetune", "render"]) {
        const s = row.ms[stage];
        const steps = row.steps[stage];
        expect(s.perStep).toBeGreaterThan(0);
        expect(s.warm).toBeCloseTo(steps * s.perStep, 6);
        expect(s.cold).toBeCloseTo(s.first + (steps - 1) * s.perStep, 6);
      }
      expect(row.ms.firstGrid.cold).toBeGreaterThan(row.ms.firstGrid.warm);
      expect(row.ms.cachedVariants).toBeGreaterThan(0);
      expect(entry.training.map((b: { batch: number }) => b.batch)).toEqual([1, 2]);
      expect(entry.sampling.map((b: { images: number }) => b.images)).toEqual([1, 4]);
    }
  }, 150_000);
});
