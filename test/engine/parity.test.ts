/**
 * Parity with diffusers + transformers + peft, for every fixture folder in SD_FIXTURES that holds the
 * three data files (test/fixtures/models/README.md): `golden` (torch's float32 results), `extra` (torch's
 * float64 txt2img / inversion / UNet call, a peft LoRA, an odd-size call) and `exact` (everything else
 * recomputed in float64 by scripts/parity-float64.ts, checked there against torch's float64). Nothing here
 * knows which fixture it runs on. Every engine result goes through the engine's public API.
 *
 * Two kinds of check, relative error ‖ours − ref‖/‖ref‖, each bound stated where it is used:
 * - Against torch's float32 result, where that is well conditioned (the text encoder, one UNet call, the
 *   VAE, the scheduler): the issue's 1e-4 for a network call, tighter for the scheduler.
 * - Against the exact (float64) result, within FACTOR × torch's own float32 error on the same input
 *   (‖torch32 − exact‖/‖exact‖, measured from the files, never from our code): a float32 engine that
 *   computes the same function lands as far from exact as torch does, give or take the luck of rounding.
 *   Measured: our error is 0.3–1.7× torch's on every result of both fixtures except sd2's txt2img. A
 *   result chained through steps may instead use the float32 scatter measured on the exact maths
 *   (exact.json `float32_scatter`), where the input makes every float32 evaluation scatter (sd2 txt2img).
 * - The seeded txt2img at 24×32 latents, where the chain is well conditioned, against its exact answer
 *   (exact.safetensors) within a small multiple of that simulated scatter: sd2's v-prediction, DDIM and
 *   guidance checked as tightly as sd1's.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { goldenTxt2imgOptions, goldenUnetArgs } from "../../src/cli/bench/golden.js";
import { StableDiffusion } from "../../src/engine/index.js";
import { openCheckpoint } from "../../src/engine/models/checkpoint.js";
import { ddimInvert } from "../../src/engine/pipelines/invert.js";
import { txt2img } from "../../src/engine/pipelines/txt2img.js";
import {
  expectClose,
  type Fixture,
  type FixtureData,
  fixturesWith,
  type GoldenJson,
  norm,
  relError,
  type Tolerance,
} from "../helpers/golden.js";

/** One float32 network call against torch's float32 one (the bound; measured ≤ 3.1e-5). */
const FORWARD: Tolerance = { max: 1e-4, why: "one float32 network call against torch's float32 one" };
/** How many times torch's own float32 error an engine result may be from the exact one. */
const FACTOR = 3;
/**
 * A float32 scalar (a loss) is rounded to 2⁻²⁴ ≈ 6e-8 of itself at least; where torch was lucky, the
 * bound is 4 such roundings (measured: our losses are 2.6e-8 … 1.1e-7 from exact).
 */
const SCALAR_FLOOR = 4 * 2 ** -24;
/**
 * A gradient that is zero in exact arithmetic (a bias right before a GroupNorm with one channel per group,
 * q/k of self-attention over a single 1×1 token) holds float32 noise: ours must be below this fraction
 * of all gradients' norm (measured: ≤ 3e-8 of it, torch's the same).
 */
const ZERO = 1e-6;
/** A chained result may also use this multiple of the largest float32 scatter simulated on the exact maths. */
const SCATTER_FACTOR = 2;

interface Scatter {
  seeds: number;
  max: number;
}

/** The bound for `name`: FACTOR × torch's error against exact (or the scalar floor, or the scatter). */
function againstExact(torchErr: number, o: { scalar?: boolean; scatter?: Scatter } = {}): Tolerance {
  const parts = [`${FACTOR} × torch's float32 error ${torchErr.toExponential(2)}`];
  let max = FACTOR * torchErr;
  if (o.scalar && SCALAR_FLOOR > max) {
    max = SCALAR_FLOOR;
    parts.push("floor: 4 float32 roundings of a scalar");
  }
  if (o.scatter && SCATTER_FACTOR * o.scatter.max > max) {
    max = SCATTER_FACTOR * o.scatter.max;
    parts.push(
      `${SCATTER_FACTOR} × the largest of ${o.scatter.seeds} simulated float32 evaluations' error ` +
        `${o.scatter.max.toExponential(2)} (exact.json float32_scatter: this input is ill-conditioned)`,
    );
  }
  return { max, why: parts.join("; ") };
}

/**
 * The seeded txt2img (24×32 latents) has no torch float32 result to measure against: its bound is this
 * multiple of the largest simulated float32 scatter (exact.json float32_scatter). Measured: 12 simulated
 * evaluations lie 6.9–7.2e-7 (sd1) and 1.07–1.21e-6 (sd2) from exact, ours 1.23e-6 and 2.11e-6 (1.7× the
 * largest: a real float32 engine also rounds inside its sums); ᾱ looked up at t−1 lands 8.3e-3 / 6.4e-3 away.
 */
const SEEDED_FACTOR = 3;

function seededBound(s: Scatter): Tolerance {
  return {
    max: SEEDED_FACTOR * s.max,
    why:
      `${SEEDED_FACTOR} × the largest of ${s.seeds} simulated float32 evaluations' error ` +
      `${s.max.toExponential(2)} (exact.json float32_scatter; well conditioned at this size)`,
  };
}

/** ours against exact, bounded by torch's float32 result's distance from exact. */
function expectExact(
  what: string,
  ours: ArrayLike<number>,
  torch: ArrayLike<number>,
  exact: ArrayLike<number>,
  o: { scalar?: boolean; scatter?: Scatter } = {},
): void {
  expectClose(what, ours, exact, againstExact(relError(torch, exact), o));
}

const sizeOf = (d: FixtureData, name: string) => {
  const [, , height, width] = d.shape(name) as [number, number, number, number];
  return { height, width };
};

for (const f of fixturesWith("golden", "extra", "exact")) {
  describe(`parity with diffusers: ${f.name}`, () => paritySuite(f));
}

function paritySuite(f: Fixture): void {
  const g = f.data("golden");
  const extra = f.data("extra");
  const exact = f.data("exact");
  const json = g.json as unknown as GoldenJson;
  const scatter = (exact.json.float32_scatter ?? {}) as Record<string, Scatter>;
  let sd: StableDiffusion;

  beforeAll(async () => {
    sd = await StableDiffusion.load(f.modelDir, { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("tokenizes every prompt to the reference ids", () => {
    json.prompts.forEach((prompt, i) => {
      expect(sd.tokenize(prompt).ids, `prompt ${i}: ${JSON.stringify(prompt)}`).toEqual(json.input_ids[i]);
    });
    const fed = g.ints("text_encoder.input_ids");
    const n = g.shape("text_encoder.input_ids")[0] as number;
    for (let i = 0; i < n; i++) expect(fed.slice(i * 77, (i + 1) * 77)).toEqual(json.input_ids[i]);
  });

  it("text encoder: last_hidden_state", async () => {
    const n = g.shape("text_encoder.input_ids")[0] as number;
    const out = await sd.encodeText(json.prompts.slice(0, n));
    expectClose("text_encoder.last_hidden_state", out, g.f32("text_encoder.last_hidden_state"), FORWARD);
  });

  /** One UNet call on `sample`'s data, against torch's float32 `out` and the exact answer. */
  async function expectUnetCall(
    d: FixtureData,
    sample: string,
    timestep: string,
    ctx: Float32Array,
    out: string,
    exactOut: ArrayLike<number>,
  ) {
    const ours = await sd.predictNoise(d.f32(sample), sizeOf(d, sample), d.ints(timestep), ctx);
    expectClose(`${out} vs torch float32`, ours, d.f32(out), FORWARD);
    expectExact(`${out} vs exact`, ours, d.f64(out), exactOut);
  }

  it("UNet: one call, batch 2, two timesteps", async () => {
    const ctx = g.f32("unet.encoder_hidden_states");
    await expectUnetCall(g, "unet.sample", "unet.timestep", ctx, "unet.out", extra.f64("f64.unet.out"));
  });

  it("UNet at odd latent sizes (17×15): up-sampling meets each skip connection's size", async () => {
    const ctx = g.f32("unet.encoder_hidden_states");
    const first = ctx.subarray(0, ctx.length / (g.shape("unet.encoder_hidden_states")[0] as number));
    await expectUnetCall(extra, "odd.sample", "odd.timestep", first, "odd.out", exact.f64("odd.out"));
  });

  it("VAE: encode (mean, std) and decode", async () => {
    const [, , h, w] = g.shape("vae.image") as [number, number, number, number];
    const sf = openCheckpoint(f.modelDir).vae.config.scaling_factor;
    const { mean, std, size } = await sd.encodeImage(g.f32("vae.image"), h, w);
    // The engine's latents are scaled; the golden distribution is the raw one.
    expectClose("vae.encode.mean", mean, scaled(g.f32("vae.encode.mean"), sf), FORWARD);
    expectClose("vae.encode.std", std, scaled(g.f32("vae.encode.std"), sf), FORWARD);
    const image = await sd.decodeLatents(scaled(g.f32("vae.encode.mean"), sf), size);
    expectClose("vae.decode.out", image, g.f32("vae.decode.out"), FORWARD);
  });

  it("txt2img: the whole pipeline with guidance and a negative prompt", async () => {
    const o = json.txt2img;
    const { latents, image } = await txt2img(sd, goldenTxt2imgOptions(o, g.f32("txt2img.latents_in")));
    const ref = extra.f64("f64.txt2img.latents_out");
    expectExact("txt2img.latents_out vs exact", latents, g.f64("txt2img.latents_out"), ref, {
      scatter: scatter["txt2img.latents_out"],
    });
    // The image is the VAE's decode of those latents (the decode itself is checked above).
    expect(image).toEqual(await sd.decodeLatents(latents, sizeOf(extra, "f64.txt2img.latents_out")));
  });

  it("txt2img at a well-conditioned size (seeded, non-square): v-prediction, DDIM and guidance tightly", async () => {
    // The golden's txt2img settings from the latents txt2img draws for a seed, at a latent size where the
    // chain is well conditioned (the 8×8 one above is not for sd2: its bottom level is 1×1), against the
    // exact float64 answer (exact.json txt2img_seeded; float64 text encoder included).
    const o = json.txt2img;
    const run = exact.json.txt2img_seeded as { seed: number; latent_size: [number, number] };
    const [h, w] = run.latent_size;
    const { latents } = await txt2img(
      sd,
      goldenTxt2imgOptions(o, { seed: run.seed, height: h * sd.vaeScale, width: w * sd.vaeScale }),
    );
    const spread = scatter["txt2img_seeded.latents_out"];
    if (!spread) throw new Error(`${exact.path}: exact.json has no float32_scatter for txt2img_seeded`);
    expectClose(
      "txt2img_seeded.latents_out vs exact",
      latents,
      exact.f64("txt2img_seeded.latents_out"),
      seededBound(spread),
    );
  });

  it("DDIM inversion conditioned on prompt 0", async () => {
    const steps = g.shape("inversion.timesteps")[0] as number;
    const context = await sd.encodeText([json.prompts[0] as string]);
    const { timesteps, latents } = await ddimInvert(sd, {
      latents: g.f32("inversion.latents_in"),
      size: sizeOf(g, "inversion.latents_in"),
      context,
      steps,
    });
    expect(timesteps).toEqual(g.ints("inversion.timesteps"));
    expectExact(
      "inversion.latents_out vs exact",
      latents[latents.length - 1] as Float32Array,
      g.f64("inversion.latents_out"),
      extra.f64("f64.inversion.latents_out"),
      { scatter: scatter["inversion.latents_out"] },
    );
  });

  describe("denoising loss and gradients (the engine's lossAndGrads)", () => {
    const t = json["grad.timestep"];
    const args = () => ({
      latents0: g.f32("grad.x0"),
      size: sizeOf(g, "grad.x0"),
      noise: g.f32("grad.noise"),
      t: [t],
      context: g.f32("grad.context"),
    });
    /** ‖every exact gradient‖: the scale a gradient that is zero in exact arithmetic is measured against. */
    const scaleOf = (names: string[]) => Math.hypot(...names.map((n) => norm(exact.f64(n))));

    /** Each gradient against exact within FACTOR × torch's error; exact zeros checked to be zero. */
    function expectGradients(
      what: string,
      names: string[],
      ours: (name: string) => Float32Array,
      torch: FixtureData,
    ) {
      expect(names.length, what).toBeGreaterThan(0);
      const scale = scaleOf(names);
      for (const name of names) {
        const ref = exact.f64(name);
        if (norm(ref) < ZERO * scale) {
          expect(norm(ours(name)), `${name} is zero in exact arithmetic`).toBeLessThan(ZERO * scale);
        } else {
          expectExact(name, ours(name), torch.f64(name), ref);
        }
      }
    }

    it("loss, d/d context and d/d every grad.d_unet.* weight", async () => {
      const names = g.names("grad.d_unet.");
      const trained = names.map((n) => n.slice("grad.d_unet.".length));
      const unet = sd.unetWeights((n) => trained.includes(n));
      expect([...unet.keys()].sort()).toEqual([...trained].sort());
      const r = await sd.lossAndGrads({ ...args(), unet, wrt: ["context", "unet"] });
      expectExact("grad.loss", [r.loss], g.f64("grad.loss"), exact.f64("grad.loss"), { scalar: true });
      expectExact(
        "grad.d_context",
        r.dContext as Float32Array,
        g.f64("grad.d_context"),
        exact.f64("grad.d_context"),
      );
      expectGradients(
        "grad.d_unet.*",
        names,
        (n) => r.dUnet?.get(n.slice("grad.d_unet.".length)) as Float32Array,
        g,
      );
    });

    it("a peft LoRA (alpha 8, rank 4, scale 2): UNet output, loss and every d/d lora_A, lora_B", async () => {
      const alpha = (extra.json.lora as { alpha: number; rank: number }).alpha;
      const lora = sd.loadLora(extra.path, { prefix: "lora.weight.", alpha });
      expect(lora.size).toBe(extra.names("lora.weight.").length / 2);
      const out = await sd.predictNoise(...goldenUnetArgs(g), { lora });
      expectClose("lora.out vs torch float32", out, extra.f32("lora.out"), FORWARD);
      expectExact("lora.out vs exact", out, extra.f64("lora.out"), exact.f64("lora.out"));
      const r = await sd.lossAndGrads({ ...args(), lora, wrt: ["lora"] });
      expectExact("lora.loss", [r.loss], extra.f64("lora.loss"), exact.f64("lora.loss"), { scalar: true });
      const ours = (name: string) => {
        const [, path, which] = name.match(/^lora\.grad\.(.+)\.lora_([AB])\.weight$/) ?? [];
        const m = r.dLora?.get(path as string);
        if (!m) throw new Error(`no LoRA gradient for ${name}`);
        return which === "A" ? m.down : m.up;
      };
      expectGradients("lora.grad.*", extra.names("lora.grad."), ours, extra);
    });
  });
}

function scaled(x: Float32Array, s: number): Float32Array {
  return x.map((v) => v * s);
}
