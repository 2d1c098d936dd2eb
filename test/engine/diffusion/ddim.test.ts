import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DDIMScheduler } from "../../../src/engine/diffusion/ddim.js";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { loadConfig, SchedulerConfigSchema } from "../../../src/engine/models/config.js";
import { fixtureDirs, loadGolden, relError } from "../../helpers/golden.js";

/**
 * One DDIM step against diffusers' (‖a − b‖/‖b‖): ours computes in float64 and rounds once, diffusers in
 * float32; measured 6e-8 (sd2) and 9e-8 (sd1). Looking ᾱ up one timestep off moves the step by 4.8e-5
 * (sd2) and 2.0e-4 (sd1), so the bound separates that by 48× and more.
 */
const STEP = 1e-6;
/**
 * The loss graph's noised sample and target on noiseScales' float32 scales against diffusers' add_noise /
 * get_velocity: measured 3.8e-8 … 4.7e-8; the scales of the next timestep (501) move them by 1.4e-3.
 */
const NOISING = 1e-6;

const SD_CONFIG = {
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  set_alpha_to_one: false,
  steps_offset: 1,
  clip_sample: false,
};

describe.each(fixtureDirs())("DDIM against the golden tensors of %s", (dir) => {
  const g = loadGolden(dir);
  const config = loadConfig(SchedulerConfigSchema, join(g.modelDir, "scheduler/scheduler_config.json"));
  const scheduler = () => DDIMScheduler.fromConfig(config);

  it("builds the same ᾱ table, each entry within one float32 ulp", () => {
    // torch.cumprod accumulates in float64 and rounds each entry, as ours does; 121 of the 1000 entries
    // still differ by one ulp (its summation order is not ours), none by more.
    const ours = scheduler().alphasCumprod;
    const ref = g.f32("ddim.alphas_cumprod");
    expect(ours.length).toBe(ref.length);
    ref.forEach((a, i) => {
      expect(Math.abs((ours[i] as number) - a), `ᾱ_${i}`).toBeLessThanOrEqual(ulp(a));
    });
  });

  it("gives the same leading timesteps for 10 and 50 steps", () => {
    const s = scheduler();
    s.setTimesteps(10);
    expect(s.timesteps).toEqual(g.ints("ddim.timesteps_10"));
    s.setTimesteps(50);
    expect(s.timesteps).toEqual(g.ints("ddim.timesteps_50"));
  });

  it("takes the same step (eta 0) at the golden timestep", () => {
    const s = scheduler();
    // The golden step was taken with the 50-step table (its timestep is one of ddim.timesteps_50).
    s.setTimesteps(50);
    const t = g.json["ddim.step.timestep"];
    expect(s.timesteps).toContain(t);
    const prev = s.step(g.f32("ddim.step.model_output"), t, g.f32("ddim.step.sample"));
    expect(relError(prev, g.f32("ddim.step.prev_sample"))).toBeLessThan(STEP);
  });

  it("gives the loss graph the scales of diffusers' noising and training target (grad.noisy, grad.target)", () => {
    const t = g.json["grad.timestep"];
    const [x0, noise] = [g.f32("grad.x0"), g.f32("grad.noise")];
    const { sqrtAlpha, sqrtOneMinusAlpha } = scheduler().noiseScales([t]);
    const [a, s] = [sqrtAlpha[0] as number, sqrtOneMinusAlpha[0] as number];
    // The loss graph's formulas (models/components.ts, lossGraph) on those scales.
    const noisy = x0.map((x, i) => a * x + s * (noise[i] as number));
    const target =
      config.prediction_type === "v_prediction" ? noise.map((n, i) => a * n - s * (x0[i] as number)) : noise;
    expect(relError(noisy, g.f32("grad.noisy"))).toBeLessThan(NOISING);
    expect(relError(target, g.f32("grad.target"))).toBeLessThan(NOISING);
  });

  it("evaluates the inversion at the golden inversion timesteps", () => {
    const s = scheduler();
    const ts = g.ints("inversion.timesteps");
    s.setTimesteps(ts.length);
    expect(s.inversionTimesteps()).toEqual(ts);
  });
});

describe("DDIM identities", () => {
  const rng = new GaussianRng(7);
  const x0 = rng.normal(64);
  const noise = rng.normal(64);
  /**
   * ᾱ_t of SD's schedule from its definition, independently of the implementation: β_i = (√β₀ + i·(√β₁ −
   * √β₀)/999)², ᾱ_t = Π_{i≤t} (1 − β_i), all in float64 (the scheduler's float32 table is within 1e-6).
   */
  const alphaBar = (t: number) => {
    const [a, b] = [Math.sqrt(SD_CONFIG.beta_start), Math.sqrt(SD_CONFIG.beta_end)];
    let p = 1;
    for (let i = 0; i <= t; i++) p *= 1 - (a + (i * (b - a)) / 999) ** 2;
    return p;
  };
  const noised = (t: number) =>
    x0.map((x, i) => Math.sqrt(alphaBar(t)) * x + Math.sqrt(1 - alphaBar(t)) * (noise[i] as number));

  it("gives each batch item its own timestep's noise scales, as the formulas", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    const ts = [100, 600, 900];
    const { sqrtAlpha, sqrtOneMinusAlpha } = s.noiseScales(ts);
    expect(
      relError(
        sqrtAlpha,
        ts.map((t) => Math.sqrt(alphaBar(t))),
      ),
    ).toBeLessThan(1e-6);
    expect(
      relError(
        sqrtOneMinusAlpha,
        ts.map((t) => Math.sqrt(1 - alphaBar(t))),
      ),
    ).toBeLessThan(1e-6);
    expect(() => s.noiseScales([100, 1000])).toThrow(/timestep 1000 is outside 0…999/);
  });

  it("recovers x₀ from the noised sample for epsilon and v-prediction", () => {
    const a = alphaBar(600);
    const v = noise.map((n, i) => Math.sqrt(a) * n - Math.sqrt(1 - a) * (x0[i] as number));
    for (const prediction_type of ["epsilon", "v_prediction"]) {
      const s = DDIMScheduler.fromConfig({ ...SD_CONFIG, prediction_type });
      expect(relError(s.alphasCumprod.subarray(600, 601), [a])).toBeLessThan(1e-6);
      const output = prediction_type === "epsilon" ? noise : v;
      expect(relError(s.predictOriginal(output, 600, noised(600)), x0)).toBeLessThan(1e-6);
    }
  });

  it("inverts a sampling step exactly when the predicted noise is the same (epsilon)", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    s.setTimesteps(4);
    // With a constant ε every step keeps the first one's clean estimate (x₀ read as the sample at ᾱ_0 =
    // 1 − β₀, set_alpha_to_one false): after the step to t, x_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε, from the
    // schedule's definition. (The round trip below alone misses an error that undoes itself over an even
    // number of steps, e.g. x̂₀ ↦ 1/x̂₀.)
    const a0 = alphaBar(0);
    const clean = x0.map((v, i) => (v - Math.sqrt(1 - a0) * (noise[i] as number)) / Math.sqrt(a0));
    let x = x0;
    for (const t of s.inversionTimesteps()) {
      x = s.invertStep(noise, t, x);
      const want = clean.map(
        (v, i) => Math.sqrt(alphaBar(t)) * v + Math.sqrt(1 - alphaBar(t)) * (noise[i] as number),
      );
      expect(relError(x, want), `x_${t}`).toBeLessThan(1e-6);
    }
    // Deterministic DDIM with a constant ε is a bijection: sampling back lands on the start.
    for (const t of s.timesteps) x = s.step(noise, t, x);
    expect(relError(x, x0)).toBeLessThan(1e-5);
  });

  it("adds the DDIM paper's σ_t·z for eta > 0 (σ_t² = (1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    s.setTimesteps(10);
    const z = new GaussianRng(8).normal(64);
    const [t, prev] = [501, 401];
    const [aT, aP] = [alphaBar(t), alphaBar(prev)];
    const xt = Float32Array.from(noised(t));
    const want = (eta: number) => {
      const sigma = eta * Math.sqrt(((1 - aP) / (1 - aT)) * (1 - aT / aP));
      return x0.map(
        (v, i) =>
          Math.sqrt(aP) * v +
          Math.sqrt(1 - aP - sigma * sigma) * (noise[i] as number) +
          sigma * (z[i] as number),
      );
    };
    // float32 table against the float64 definition: measured ≤ 1e-7.
    for (const eta of [0.5, 1])
      expect(relError(s.step(noise, t, xt, { eta, noise: z }), want(eta))).toBeLessThan(1e-6);
  });

  it("lands on ᾱ_0's clean estimate at the last step and refuses bad arguments", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    expect(() => s.step(noise, 1, x0)).toThrow(/setTimesteps/);
    s.setTimesteps(10);
    expect(s.finalAlphaCumprod).toBe(Math.fround(1 - SD_CONFIG.beta_start));
    // From t = 1 the step goes past 0 and uses set_alpha_to_one = false's ᾱ_0 = 1 − β₀: with the true
    // noise as the prediction it lands on √ᾱ_0·x₀ + √(1 − ᾱ_0)·ε exactly (float32 rounding: 1e-7).
    const xt = Float32Array.from(noised(1));
    expect(relError(s.step(noise, 1, xt), noised(0))).toBeLessThan(1e-6);
    expect(() => s.setTimesteps(0)).toThrow(/from 1 to 1000/);
    expect(() => s.setTimesteps(1001)).toThrow(/from 1 to 1000/);
    s.setTimesteps(1000);
    expect(() => s.step(noise, 1000, xt)).toThrow(/timestep 1000 is outside 0…999/);
    expect(() => s.step(noise, -1, xt)).toThrow(/timestep -1 is outside 0…999/);
    s.setTimesteps(10);
    expect(() => s.step(noise.subarray(1), 1, xt)).toThrow(/63 values but the sample has 64/);
    expect(() => s.step(noise, 1, xt, { eta: 1 })).toThrow(/needs noise/);
  });

  it("clips x̂₀ to clip_sample_range in a sampling step (ε recomputed) but not ε in an inversion step", () => {
    const s = DDIMScheduler.fromConfig({ ...SD_CONFIG, clip_sample: true, clip_sample_range: 0.5 });
    s.setTimesteps(10);
    const [t, prev] = [501, 401];
    const [aT, aP] = [alphaBar(t), alphaBar(prev)];
    const xt = Float32Array.from(noised(t));
    // diffusers' DDIMScheduler.step: x̂₀ clipped, ε = (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t) from the clipped x̂₀.
    const x0c = x0.map((v) => Math.min(0.5, Math.max(-0.5, v)));
    const eps = x0c.map((v, i) => ((xt[i] as number) - Math.sqrt(aT) * v) / Math.sqrt(1 - aT));
    const want = x0c.map((v, i) => Math.sqrt(aP) * v + Math.sqrt(1 - aP) * (eps[i] as number));
    expect(relError(s.step(noise, t, xt), want)).toBeLessThan(1e-6);
    // DDIMInverseScheduler.step: x̂₀ clipped, the model's ε kept.
    const xp = Float32Array.from(noised(prev));
    const up = x0c.map((v, i) => Math.sqrt(aT) * v + Math.sqrt(1 - aT) * (noise[i] as number));
    expect(relError(s.invertStep(noise, t, xp), up)).toBeLessThan(1e-6);
  });

  it("builds the linear β schedule's ᾱ from its definition", () => {
    const s = DDIMScheduler.fromConfig({
      ...SD_CONFIG,
      beta_schedule: "linear",
      beta_start: 1e-4,
      beta_end: 2e-2,
    });
    let p = 1;
    const want: number[] = [];
    for (let i = 0; i < 1000; i++) {
      p *= 1 - (1e-4 + (i * (2e-2 - 1e-4)) / 999);
      want.push(p);
    }
    // float32 betas and table against the float64 definition.
    expect(relError(s.alphasCumprod, want)).toBeLessThan(1e-6);
  });

  it("rescales the schedule to zero terminal SNR (rescale_betas_zero_snr) as Lin et al.'s Algorithm 1", () => {
    const config = { ...SD_CONFIG, rescale_betas_zero_snr: true, prediction_type: "v_prediction" };
    const s = DDIMScheduler.fromConfig(config);
    // The definition in float64: √ᾱ'_t = (√ᾱ_t − √ᾱ_T)·√ᾱ_0/(√ᾱ_0 − √ᾱ_T), from SD's own ᾱ.
    const [first, last] = [Math.sqrt(alphaBar(0)), Math.sqrt(alphaBar(999))];
    const want = Array.from(
      { length: 1000 },
      (_, t) => ((Math.sqrt(alphaBar(t)) - last) * first) / (first - last),
    );
    // float32 betas and table against it (the plain schedule's table is also within 1e-6, above).
    expect(relError(s.alphasCumprod.map(Math.sqrt), want)).toBeLessThan(1e-6);
    expect(s.alphasCumprod[999]).toBe(0);
    expect(Math.abs((s.alphasCumprod[0] as number) - alphaBar(0))).toBeLessThan(ulp(alphaBar(0)));
    // Pure noise at the last timestep: a v-prediction's x̂₀ is −v and ε is the sample itself.
    const v = rng.normal(64);
    const x = rng.normal(64);
    const trailing = DDIMScheduler.fromConfig({ ...config, timestep_spacing: "trailing" });
    trailing.setTimesteps(2);
    expect(trailing.timesteps[0]).toBe(999);
    const x0 = trailing.predictOriginal(v, 999, x);
    expect([...x0]).toEqual([...v].map((e) => -e));
    const next = trailing.step(v, 999, x);
    const aPrev = trailing.alphasCumprod[499] as number;
    const stepWant = x0.map((e, i) => Math.sqrt(aPrev) * e + Math.sqrt(1 - aPrev) * (x[i] as number));
    expect(relError(next, stepWant)).toBeLessThan(1e-6);
    expect(next.every(Number.isFinite)).toBe(true);
  });

  it("refuses zero terminal SNR with epsilon prediction where sampling starts at ᾱ = 0", () => {
    const config = { ...SD_CONFIG, rescale_betas_zero_snr: true, timestep_spacing: "trailing" };
    expect(() => DDIMScheduler.fromConfig(config)).toThrow(/rescale_betas_zero_snr/);
    expect(() => DDIMScheduler.fromConfig({ ...config, prediction_type: "v_prediction" })).not.toThrow();
    // Leading spacing never reaches the last timestep (diffusers samples such configs without NaN).
    expect(() => DDIMScheduler.fromConfig({ ...config, timestep_spacing: "leading" })).not.toThrow();
  });

  it("supports trailing and linspace spacing as diffusers computes them", () => {
    const trailing = DDIMScheduler.fromConfig({ ...SD_CONFIG, timestep_spacing: "trailing" });
    trailing.setTimesteps(3);
    expect(trailing.timesteps).toEqual([999, 666, 332]);
    const lin = DDIMScheduler.fromConfig({ ...SD_CONFIG, timestep_spacing: "linspace" });
    lin.setTimesteps(4);
    expect(lin.timesteps).toEqual([999, 666, 333, 0]);
  });
});

/** One float32 ulp at the magnitude of a (normal numbers). */
function ulp(a: number): number {
  return 2 ** (Math.floor(Math.log2(Math.abs(a))) - 23);
}
