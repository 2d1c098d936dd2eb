import { describe, expect, it } from "vitest";
import { LossPlateau } from "../../../src/engine/optim/plateau.js";

// A deterministic "noisy" loss: ±30 % wiggle around a trend, like per-step diffusion losses.
const wiggle = (i: number) => 1 + 0.3 * Math.sin(i * 1.7);
const opts = { beta: 0.9, patience: 40, minRelImprovement: 0.01, minSteps: 60 };

function stopStep(loss: (i: number) => number, max: number): number | undefined {
  const p = new LossPlateau(opts);
  for (let i = 0; i < max; i++) if (p.update(loss(i))) return i + 1;
  return undefined;
}

describe("LossPlateau", () => {
  it("keeps going while a noisy loss still falls", () => {
    expect(stopStep((i) => Math.exp(-i / 300) * wiggle(i), 600)).toBeUndefined();
  });

  it("stops a flat noisy loss soon after minSteps, not before", () => {
    const at = stopStep(wiggle, 600);
    expect(at).toBeDefined();
    expect(at as number).toBeGreaterThanOrEqual(opts.minSteps);
    expect(at as number).toBeLessThan(opts.minSteps + 3 * opts.patience);
  });

  it("stops once a falling loss flattens out", () => {
    // Falls for ~200 steps, then flat: must run past the fall and stop within a few patience windows.
    const at = stopStep((i) => (1 + 4 * Math.exp(-i / 40)) * wiggle(i), 2000) as number;
    expect(at).toBeGreaterThan(150);
    expect(at).toBeLessThan(500);
  });

  it("reports a bias-corrected average", () => {
    const p = new LossPlateau(opts);
    expect(p.average).toBeNaN();
    p.update(2);
    expect(p.average).toBeCloseTo(2, 12);
    p.update(4); // (0.9·0.1·2 + 0.1·4) / (1 − 0.81) = 0.58 / 0.19
    expect(p.average).toBeCloseTo(0.58 / 0.19, 12);
  });
});
