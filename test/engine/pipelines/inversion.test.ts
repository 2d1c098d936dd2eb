/**
 * The two inversions on the fixture models (parity with the official code: inversion-parity.test.ts):
 * direct inversion reconstructs the encoded photo exactly by following its trajectory; null-text's rate
 * schedule, fresh Adam, early stop and cancellation; its loss gradient (ε and v prediction) against
 * finite differences; and both reconstructions' PSNR against the decoded photo latents.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { relativeDistance } from "../../../src/engine/distance.js";
import { CancelledError } from "../../../src/engine/errors.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import {
  type InversionProgress,
  invertDirect,
  invertNullText,
  NullTextOptimizer,
  nullTextLr,
  psnr,
  reconstructSource,
} from "../../../src/engine/pipelines/inversion.js";
import { SIZE, smoothPhoto } from "./imagic-fixture.js";

const PROMPT = "a photo of a cat";
const STEPS = 8;
const GUIDANCE = 7.5;

async function load(name: "sd1" | "sd2"): Promise<StableDiffusion> {
  return StableDiffusion.load(`test/fixtures/models/${name}/model`, { device: "cpu", dtype: "fp32" });
}

/** The smooth photo's latents, with the prompt, steps and guidance the inversions here run at. */
async function encoded(sd: StableDiffusion) {
  const { mean, size } = await sd.encodeImage(smoothPhoto(), SIZE, SIZE);
  return { latents0: mean, size, prompt: PROMPT, steps: STEPS, guidance: GUIDANCE };
}

let sd1: StableDiffusion;
/** The sd2 fixture, loaded by the first test that asks for it. */
let sd2Loaded: Promise<StableDiffusion> | undefined;
const sd2 = () => {
  sd2Loaded ??= load("sd2");
  return sd2Loaded;
};
beforeAll(async () => {
  sd1 = await load("sd1");
});
afterAll(async () => {
  await sd1?.release();
  await (await sd2Loaded)?.release();
});

/** Each u_i differs from the u it started from (CLIP("") for u_0, u_{i−1} after): every step updated it. */
async function expectEveryStepMovesU(sd: StableDiffusion, u: Float32Array[]): Promise<void> {
  const uncond = await sd.encodeText([""]);
  [uncond, ...u.slice(0, -1)].forEach((before, i) => {
    expect(relativeDistance(u[i] as Float32Array, before), `step ${i}`).toBeGreaterThan(0);
  });
}

describe("inversion on the sd1 fixture", () => {
  let sd: StableDiffusion;
  beforeAll(() => {
    sd = sd1;
  });

  it("direct inversion keeps z_0 … z_N and its reconstruction is the encoded photo", async () => {
    const args = await encoded(sd);
    const { latents0 } = args;
    const source = await invertDirect(sd, args);
    const path = source.trajectory as Float32Array[];
    expect(source.method).toBe("direct");
    expect(path).toHaveLength(STEPS + 1);
    expect(path[0]).toBe(latents0);
    expect(source.xT).toBe(path[STEPS]);
    // The sampler's UNet sees exactly the inversion's latents: z_N, then z_{N−1−i} after step i.
    const seen: Float32Array[] = [];
    const predict = sd.predictNoise.bind(sd);
    const spy = vi.spyOn(sd, "predictNoise").mockImplementation((latents, ...rest) => {
      seen.push(latents.slice(0, latents0.length));
      return predict(latents, ...rest);
    });
    let guided: Awaited<ReturnType<typeof reconstructSource>>;
    try {
      guided = await reconstructSource(sd, source);
    } finally {
      spy.mockRestore();
    }
    expect(seen).toHaveLength(STEPS);
    seen.forEach((x, i) => {
      expect(Array.from(x), `UNet input at step ${i}`).toEqual(Array.from(path[STEPS - i] as Float32Array));
    });
    expect(relativeDistance(guided.latents, latents0)).toBeLessThanOrEqual(1e-4);
    // What the moves corrected: guidance 7.5 pulls every step off the inversion path.
    expect(guided.corrections).toHaveLength(STEPS);
    expect(Math.min(...guided.corrections)).toBeGreaterThan(0);
  });

  it("reports both reconstructions' PSNR against the decoded photo latents", async () => {
    const args = await encoded(sd);
    const { latents0, size } = args;
    const direct = await reconstructSource(sd, await invertDirect(sd, args));
    const nullText = await reconstructSource(
      sd,
      (await invertNullText(sd, { ...args, innerSteps: 2 })).source,
    );
    const [photo, fromDirect, fromNullText] = await Promise.all(
      [latents0, direct.latents, nullText.latents].map((l) => sd.decodeLatents(l, size)),
    );
    const db = { direct: psnr(fromDirect as Float32Array, photo as Float32Array) };
    const nt = psnr(fromNullText as Float32Array, photo as Float32Array);
    // The random fixture cannot reconstruct under guidance 7.5 by optimizing u (its null-text losses grow
    // to ≈ 4): the number is printed for the report, not judged.
    console.info(
      `reconstruction PSNR vs the decoded photo latents: direct ${db.direct} dB, null-text ${nt.toFixed(2)} dB`,
    );
    expect(db.direct).toBe(Number.POSITIVE_INFINITY);
    expect(Number.isFinite(nt)).toBe(true);
  });

  it("runs at non-square latents (8×16): direct reconstructs exactly, null-text optimizes each step", async () => {
    const size = { height: 8, width: 16 };
    const latents0 = new GaussianRng(11).normal(4 * 8 * 16);
    const args = { latents0, size, prompt: PROMPT, steps: 2, guidance: GUIDANCE };
    const direct = await invertDirect(sd, args);
    expect(relativeDistance((await reconstructSource(sd, direct)).latents, latents0)).toBeLessThanOrEqual(
      1e-4,
    );
    const nullText = await invertNullText(sd, { ...args, innerSteps: 1 });
    expect(nullText.source).toMatchObject({ height: 8, width: 16, steps: 2 });
    expect(nullText.losses.flat().every(Number.isFinite)).toBe(true);
    expect(nullText.source.nullEmbeddings).toHaveLength(2);
  });

  it("null-text: a fresh Adam per sampling step at 1e-2·(1 − i/100) moves every entry by at most that rate", async () => {
    const { latents0, size } = await encoded(sd);
    const [uncond, cond] = [await sd.encodeText([""]), await sd.encodeText([PROMPT])];
    const optimizer = await NullTextOptimizer.create(sd, {
      size,
      steps: STEPS,
      guidance: GUIDANCE,
      innerSteps: 1,
      cond,
    });
    const x = new GaussianRng(3).normal(latents0.length);
    for (const i of [0, STEPS - 1]) {
      const u = uncond.slice();
      await optimizer.step(i, x, u, latents0);
      // Adam's first update is lr·g/(|g| + 1e-8): ≈ lr for the entries with the largest gradients.
      let most = 0;
      for (let k = 0; k < u.length; k++)
        most = Math.max(most, Math.abs((u[k] as number) - (uncond[k] as number)));
      expect(Math.abs(most - nullTextLr(i)) / nullTextLr(i), `step ${i}`).toBeLessThan(1e-3);
    }
    expect(nullTextLr(STEPS - 1)).toBeCloseTo(1e-2 * 0.93, 12);
  });

  it("null-text: the early stop is tested after the update, on the loss from before it", async () => {
    // Every loss is below this threshold: each step stops after its first inner step, which still updates u.
    const r = await invertNullText(sd, {
      ...(await encoded(sd)),
      innerSteps: 3,
      earlyStopEpsilon: 1e6,
    });
    expect(r.losses.map((l) => l.length)).toEqual(Array(STEPS).fill(1));
    await expectEveryStepMovesU(sd, r.source.nullEmbeddings as Float32Array[]);
  });

  it("direct inversion and its reconstruction stop within a step of a cancel", async () => {
    const args = await encoded(sd);
    const inverting = new AbortController();
    const steps: number[] = [];
    const run = invertDirect(sd, {
      ...args,
      signal: inverting.signal,
      onProgress: (p) => {
        steps.push(p.step);
        if (p.step === 2) inverting.abort();
      },
    });
    await expect(run).rejects.toThrow(CancelledError);
    await expect(run).rejects.toThrow("cancelled at inversion step 3/8");
    expect(steps).toEqual([1, 2]);
    const source = await invertDirect(sd, args);
    const sampling = new AbortController();
    const rec = reconstructSource(sd, source, {
      signal: sampling.signal,
      onStep: (step) => {
        if (step === 5) sampling.abort();
      },
    });
    await expect(rec).rejects.toThrow("cancelled at reconstruction step 6/8");
  });

  it("null-text stops within an inner step of a cancel", async () => {
    const args = await encoded(sd);
    const controller = new AbortController();
    const seen: InversionProgress[] = [];
    const run = invertNullText(sd, {
      ...args,
      innerSteps: 3,
      signal: controller.signal,
      onProgress: (p) => {
        seen.push(p);
        if (p.stage === "null-text" && p.step === 2) controller.abort();
      },
    });
    await expect(run).rejects.toThrow(CancelledError);
    await expect(run).rejects.toThrow("cancelled at null-text step 3/8, inner step 1/3");
    expect(seen.filter((p) => p.stage === "invert")).toHaveLength(STEPS);
    expect(seen.at(-1)).toMatchObject({ stage: "null-text", step: 2 });
  });
});

/**
 * The null-text loss L(u) = mean((x'(u) − z)²), x' the guided DDIM step, has the gradient
 * Jᵀ·(2/n)·c·(x' − z), J = ∂UNet(x, t, u)/∂u and c = ∂x'/∂m_u (guidance and step coefficients). The
 * engine's denoising loss mean((UNet(noisy, t, u) − T)²) has Jᵀ·(2/n)·(UNet − T), and its d/d context is
 * checked against torch (parity.test.ts). With noisy = x and T = m_u − c·(x' − z) the two gradients are
 * the same vector. (Finite differences cannot judge it here: along random directions the random fixtures'
 * loss bends within 1e-2 of u, and float32 leaves no smaller step.)
 */
async function gradientIdentity(sd: StableDiffusion): Promise<{ loss: number; grad: number }> {
  const args = await encoded(sd);
  const { size } = args;
  const [uncond, cond] = [await sd.encodeText([""]), await sd.encodeText([PROMPT])];
  const source = await invertDirect(sd, args);
  const path = source.trajectory as Float32Array[];
  const i = 1;
  const [x, z] = [path[STEPS - i] as Float32Array, path[STEPS - 1 - i] as Float32Array];
  const optimizer = await NullTextOptimizer.create(sd, { size, steps: STEPS, guidance: GUIDANCE, cond });
  const ours = await (await optimizer.lossAt(i, x, z))(uncond);

  const scheduler = sd.scheduler();
  scheduler.setTimesteps(STEPS);
  const t = scheduler.timesteps[i] as number;
  const aT = scheduler.alphasCumprod[t] as number;
  const aPrev = scheduler.alphasCumprod[scheduler.prevTimestep(t)] as number;
  const [sa, so, sp, sop] = [Math.sqrt(aT), Math.sqrt(1 - aT), Math.sqrt(aPrev), Math.sqrt(1 - aPrev)];
  const eps = sd.predictionType === "epsilon";
  // ∂x'/∂m for the model output m (ε: x' = sp·(x − so·m)/sa + sop·m; v: sp·(sa·x − so·m) + sop·(sa·m + so·x)).
  const dStep = eps ? sop - (sp * so) / sa : sop * sa - sp * so;
  const c = dStep * (1 - GUIDANCE);
  const mU = await sd.predictNoise(x, size, t, uncond);
  const mC = await sd.predictNoise(x, size, t, cond);
  const next = scheduler.step(
    mU.map((u, k) => u + GUIDANCE * ((mC[k] as number) - u)),
    t,
    x,
  );
  let loss = 0;
  const target = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    const r = (next[k] as number) - (z[k] as number);
    loss += r * r;
    target[k] = (mU[k] as number) - c * r;
  }
  // noisy = sa·x0 + so·noise = x, and the loss graph's target (ε: noise; v: sa·noise − so·x0) = target.
  const noise = eps ? target : target.map((v, k) => sa * v + so * (x[k] as number));
  const x0 = eps
    ? x.map((v, k) => (v - so * (target[k] as number)) / sa)
    : x.map((v, k) => sa * v - so * (target[k] as number));
  const { dContext } = await sd.lossAndGrads({
    latents0: x0,
    size,
    noise,
    t: [t],
    context: uncond,
    wrt: ["context"],
  });
  return {
    loss: Math.abs(ours.loss - loss / x.length) / (loss / x.length),
    grad: relativeDistance(ours.grad, dContext as Float32Array),
  };
}

describe("the null-text loss and gradient: the guided DDIM step's residual pulled back through the UNet", () => {
  const check = async (name: string, sd: StableDiffusion) => {
    const err = await gradientIdentity(sd);
    console.info(`${name}: null-text loss and gradient vs the engine's denoising loss`, err);
    // The same maths in another float32 order: the parity suite's tolerances (forward 1e-4, gradients
    // 1e-3; measured 5e-6 / 8e-5 on sd1, 2e-7 / 5e-5 on sd2). A wrong coefficient is off by O(1).
    expect(err.loss).toBeLessThan(1e-4);
    expect(err.grad).toBeLessThan(1e-3);
  };
  it("sd1 (ε-prediction)", () => check("sd1", sd1));
  it("sd2 (v-prediction)", async () => check("sd2", await sd2()));
});

describe("inversion on the sd2 fixture (v-prediction, SD 2.x)", () => {
  it("both inversions end to end at non-square latents: direct reconstructs exactly, null-text moves u each step", async () => {
    const sd = await sd2();
    const size = { height: 8, width: 16 };
    const latents0 = new GaussianRng(12).normal(4 * 8 * 16);
    const args = { latents0, size, prompt: PROMPT, steps: 3, guidance: GUIDANCE };
    const direct = await reconstructSource(sd, await invertDirect(sd, args));
    expect(relativeDistance(direct.latents, latents0)).toBeLessThanOrEqual(1e-4);
    const nullText = await invertNullText(sd, { ...args, innerSteps: 1 });
    await expectEveryStepMovesU(sd, nullText.source.nullEmbeddings as Float32Array[]);
    const rec = await reconstructSource(sd, nullText.source);
    expect(rec.latents.every(Number.isFinite)).toBe(true);
  });
});
