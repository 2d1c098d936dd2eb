import { describe, expect, it } from "vitest";
import { Adam } from "../../../src/engine/optim/adam.js";

describe("Adam", () => {
  it("matches three hand-computed steps with bias correction", () => {
    // By hand (β₁=0.9, β₂=0.999, ε=1e-8, lr=0.1), gradients 0.5, −1, 0.25 on p₀=1:
    // t=1: m=0.05, v=2.5e-4, m̂=0.5, v̂=0.25 → p = 1 − 0.1·0.5/(0.5+1e-8) = 0.900000002
    // t=2: m=−0.055, v=0.00124975, m̂=−0.2894737, v̂=0.6251876 → p = 0.93661035424
    // t=3: m=−0.0245, v=0.00131100025, m̂=−0.0904059, v̂=0.4374374 → p = 0.95027942034
    const p = new Float32Array([1]);
    const adam = new Adam([p], { lr: 0.1 });
    const expected = [0.900000002, 0.9366103542, 0.9502794203];
    [0.5, -1, 0.25].forEach((g, i) => {
      adam.step([new Float32Array([g])]);
      // float32 storage of p: relative error ≤ 2⁻²⁴ per step.
      expect(p[0]).toBeCloseTo(expected[i] as number, 6);
    });
    expect(adam.steps).toBe(3);
  });

  it("moves every element by about lr on its first step whatever the gradient's scale (bias correction)", () => {
    const p = new Float32Array([0, 0, 0]);
    const adam = new Adam([p], { lr: 1e-3 });
    adam.step([new Float32Array([1e-6, -3, 1e4])]);
    expect(p[0]).toBeCloseTo(-1e-3 * (1e-6 / (1e-6 + 1e-8)), 9);
    expect(p[1]).toBeCloseTo(1e-3, 9);
    expect(p[2]).toBeCloseTo(-1e-3, 9);
  });

  it("keeps separate moments per parameter tensor and honours custom betas", () => {
    const a = new Float32Array([2]);
    const b = new Float32Array([2]);
    const adam = new Adam([a, b], { lr: 0.5, beta1: 0, beta2: 0 });
    // β₁=β₂=0 → update = lr·g/(|g|+ε) = lr·sign(g)
    adam.step([new Float32Array([3]), new Float32Array([-0.1])]);
    expect(a[0]).toBeCloseTo(1.5, 6);
    expect(b[0]).toBeCloseTo(2.5, 6);
  });

  it("minimises a quadratic", () => {
    const p = new Float32Array([5, -3]);
    const adam = new Adam([p], { lr: 0.05 });
    for (let i = 0; i < 2000; i++)
      adam.step([new Float32Array([2 * ((p[0] as number) - 1), 2 * ((p[1] as number) + 2)])]);
    expect(p[0]).toBeCloseTo(1, 2);
    expect(p[1]).toBeCloseTo(-2, 2);
  });

  it("refuses mismatched gradients and bad settings by name", () => {
    const adam = new Adam([new Float32Array(2)], { lr: 0.1 });
    expect(() => adam.step([new Float32Array(3)])).toThrow(/gradient 0 has 3 values, its parameter 2/);
    expect(() => adam.step([])).toThrow(/0 gradients for 1 parameters/);
    expect(() => new Adam([], { lr: 0 })).toThrow(/lr must be > 0/);
    expect(() => new Adam([], { lr: 1, beta2: 1 })).toThrow(/beta2 must be in \[0, 1\)/);
  });
});
