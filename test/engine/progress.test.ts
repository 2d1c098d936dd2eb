import { describe, expect, it } from "vitest";
import { EtaTracker, formatSeconds } from "../../src/engine/progress.js";

function clock() {
  let t = 0;
  return { now: () => t, advance: (dt: number) => (t += dt) };
}

describe("EtaTracker", () => {
  const plan = [
    { stage: "embedding", steps: 10, weight: 1 },
    { stage: "finetune", steps: 20, weight: 1 },
    { stage: "render", steps: 50, weight: 0.5 },
  ];

  it("ignores the slow first step and estimates later stages from their weights", () => {
    const c = clock();
    const eta = new EtaTracker(plan, c.now);
    eta.begin("embedding");
    c.advance(30); // first step: session creation
    expect(eta.step("embedding", 1)).toBeUndefined();
    c.advance(2);
    // 8 embedding steps + 20 fine-tune steps at 2 s, 50 render steps at 1 s
    expect(eta.step("embedding", 2)).toBeCloseTo(8 * 2 + 20 * 2 + 50 * 1, 9);
  });

  it("switches to a stage's own measured rate and drops steps skipped by early stopping", () => {
    const c = clock();
    const eta = new EtaTracker(plan, c.now, 0);
    eta.begin("embedding");
    for (let i = 1; i <= 4; i++) {
      c.advance(2);
      eta.step("embedding", i);
    }
    eta.finish("embedding"); // stopped early at 4 of 10
    eta.begin("finetune");
    c.advance(10);
    eta.step("finetune", 1);
    c.advance(3);
    // 18 fine-tune steps at 3 s; render from the fine-tune rate: 50 × 3 × 0.5
    expect(eta.step("finetune", 2)).toBeCloseTo(18 * 3 + 75, 9);
  });

  it("names an unknown stage", () => {
    expect(() => new EtaTracker(plan).begin("decode")).toThrow('unknown stage "decode"');
  });
});

describe("formatSeconds", () => {
  it("formats seconds, minutes and hours", () => {
    expect(formatSeconds(12.4)).toBe("12 s");
    expect(formatSeconds(185)).toBe("3 min 05 s");
    expect(formatSeconds(3720)).toBe("1 h 02 min");
  });
});
