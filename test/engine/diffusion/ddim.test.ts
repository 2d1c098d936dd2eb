import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DDIMScheduler } from "../../../src/engine/diffusion/ddim.js";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { loadConfig, SchedulerConfigSchema } from "../../../src/engine/models/config.js";
import { fixtureDirs, loadGolden, relError } from "../../helpers/golden.js";

/** The parity tolerance of the issue for scheduler tables and steps: ‖a − b‖ / ‖b‖. */
const TOL = 1e-4;

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

  it("builds the same ᾱ table", () => {
    expect(relError(scheduler().alphasCumprod, g.f32("ddim.alphas_cumprod"))).toBeLessThan(TOL);
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
    expect(relError(prev, g.f32("ddim.step.prev_sample"))).toBeLessThan(TOL);
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

  it("recovers x₀ from the noised sample for epsilon and v-prediction", () => {
    for (const prediction_type of ["epsilon", "v_prediction"]) {
      const s = DDIMScheduler.fromConfig({ ...SD_CONFIG, prediction_type });
      const xt = s.addNoise(x0, noise, 600);
      const output = prediction_type === "epsilon" ? noise : s.velocity(x0, noise, 600);
      expect(Array.from(s.target(x0, noise, 600))).toEqual(Array.from(output));
      expect(relError(s.predictOriginal(output, 600, xt), x0)).toBeLessThan(1e-6);
    }
  });

  it("adds noise per batch item with its own timestep", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    const both = s.addNoise(x0, noise, [100, 900]);
    expect(Array.from(both.subarray(0, 32))).toEqual(Array.from(s.addNoise(x0, noise, 100).subarray(0, 32)));
    expect(Array.from(both.subarray(32))).toEqual(Array.from(s.addNoise(x0, noise, 900).subarray(32)));
    expect(() => s.addNoise(x0, noise, [1, 2, 3])).toThrow(/3 timesteps do not split a batch of 64/);
  });

  it("inverts a sampling step exactly when the predicted noise is the same (epsilon)", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    s.setTimesteps(4);
    let x = x0;
    for (const t of s.inversionTimesteps()) x = s.invertStep(noise, t, x);
    // Deterministic DDIM with a constant ε is a bijection: sampling back lands on the start.
    for (const t of s.timesteps) x = s.step(noise, t, x);
    expect(relError(x, x0)).toBeLessThan(1e-5);
  });

  it("lands on ᾱ_0's clean estimate at the last step and refuses bad arguments", () => {
    const s = DDIMScheduler.fromConfig(SD_CONFIG);
    expect(() => s.step(noise, 1, x0)).toThrow(/setTimesteps/);
    s.setTimesteps(10);
    const a0 = s.alphasCumprod[0] as number;
    expect(s.finalAlphaCumprod).toBe(a0);
    const xt = s.addNoise(x0, noise, 1);
    // From t = 1 the step goes past 0 and uses set_alpha_to_one = false's ᾱ_0.
    const last = s.step(noise, 1, xt);
    const expected = s.addNoise(x0, noise, 0);
    expect(relError(last, expected)).toBeLessThan(1e-5);
    expect(() => s.setTimesteps(0)).toThrow(/from 1 to 1000/);
    expect(() => s.step(noise.subarray(1), 1, xt)).toThrow(/63 values but the sample has 64/);
    expect(() => s.step(noise, 1, xt, { eta: 1 })).toThrow(/needs noise/);
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
