import { describe, expect, it } from "vitest";
import { UserFacingError } from "../../src/errors.js";
import {
  EARLY_STOP,
  getPreset,
  imagicOptions,
  LIMITS,
  PRESETS,
  parseNumberList,
  validateRenderOptions,
} from "../../src/spec/imagic.js";

describe("Imagic presets and options", () => {
  it("paper preset keeps the paper's schedule: 1000 + 1500 single-timestep steps, no early stop", () => {
    const o = imagicOptions("paper");
    expect([o.embedding.steps, o.finetune.steps, o.embedding.batch, o.finetune.batch]).toEqual([
      1000, 1500, 1, 1,
    ]);
    expect(o.earlyStop).toBeNull();
  });

  it("balanced draws about the community pipeline's 500 + 1000 samples, in 4× fewer steps", () => {
    const o = imagicOptions("balanced");
    expect(o.embedding.steps * o.embedding.batch).toBe(500);
    expect(o.finetune.steps * o.finetune.batch).toBe(1000);
    expect(o.earlyStop).toBeNull();
  });

  it("fast costs less than balanced, which costs less than paper (samples per run)", () => {
    const cost = (p: "fast" | "balanced" | "paper") => {
      const o = imagicOptions(p);
      return o.embedding.steps * o.embedding.batch + o.finetune.steps * o.finetune.batch;
    };
    expect(cost("fast")).toBeLessThan(cost("balanced"));
    expect(cost("balanced")).toBeLessThan(cost("paper"));
  });

  it("overrides one setting, keeps the rest, and can turn early stopping on and off", () => {
    const o = imagicOptions("balanced", { finetune: { loraRank: 4 } });
    expect(o.finetune.loraRank).toBe(4);
    expect(o.finetune.lr).toBe(PRESETS.balanced.train.finetune.lr);
    const on = imagicOptions("paper", { earlyStop: { patience: 0.5 } });
    expect(on.earlyStop).toEqual({ ...EARLY_STOP, patience: 0.5 });
    expect(imagicOptions("paper", { earlyStop: null }).earlyStop).toBeNull();
    // The preset table itself is never mutated by overrides.
    expect(PRESETS.balanced.train.finetune.loraRank).toBe(16);
    expect(PRESETS.paper.train.earlyStop).toBeNull();
  });

  it("refuses every out-of-range setting at once, naming each and its limit", () => {
    const err = (() => {
      try {
        imagicOptions("fast", { embedding: { steps: -1, lr: 0 }, finetune: { batch: 99, loraRank: 2.5 } });
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err).toBeInstanceOf(UserFacingError);
    expect(err?.message).toContain("embedding steps must be a whole number from 0 to 5000 (got -1)");
    expect(err?.message).toContain("embedding learning rate must be a number > 0 and ≤ 1 (got 0)");
    expect(err?.message).toContain(
      `finetune batch (timesteps per step) must be a whole number from 1 to ${LIMITS.batch} (got 99)`,
    );
    expect(err?.message).toContain("LoRA rank must be a whole number from 1 to 128 (got 2.5)");
    expect(() => getPreset("slow")).toThrow('unknown Imagic preset "slow" (use fast, balanced, paper)');
  });

  it("allows η up to 1.5 and refuses beyond, too many seeds and too many images", () => {
    const ok = { etas: [0, 0.7, 1.5], seeds: [1, 2], guidance: 7.5, steps: 50 };
    expect(validateRenderOptions(ok)).toBe(ok);
    expect(() => validateRenderOptions({ ...ok, etas: [1.6] })).toThrow(/η .* up to 1.5 .*≤ 1.5 \(got 1.6\)/);
    expect(() => validateRenderOptions({ ...ok, etas: [-0.1] })).toThrow(/got -0.1/);
    const seeds = Array.from({ length: 17 }, (_, i) => i);
    expect(() => validateRenderOptions({ ...ok, seeds })).toThrow(/give 1 to 16 seeds \(got 17\)/);
    expect(() => validateRenderOptions({ ...ok, etas: [0.5, 1, 1.2], seeds: seeds.slice(0, 12) })).toThrow(
      /3 η values × 12 seeds = 36 images, more than 32/,
    );
    expect(() => validateRenderOptions({ ...ok, guidance: 0.5, steps: 0 })).toThrow(/guidance.*DDIM steps/);
  });

  it("parses comma lists and names what it could not read", () => {
    expect(parseNumberList("0.7, 1,1.2", "--eta")).toEqual([0.7, 1, 1.2]);
    expect(() => parseNumberList("1,two", "--seeds")).toThrow(
      '--seeds must be a comma-separated list of numbers (could not read "two")',
    );
    expect(() => parseNumberList(" , ", "--eta")).toThrow(/--eta must be/);
  });
});
