/**
 * The joint sampler (photoswap.ts) where the official goldens do not reach: the SD 2.x fixture
 * (v-prediction, linear projections, per-level heads, one layer per block) at non-square latents, K
 * target rows side by side, a concept's LoRA on the target rows only, and a blend whose layers differ in
 * size. Exactness against the official code is test/engine/photoswap-parity.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { CancelledError } from "../../../src/engine/errors.js";
import { type LatentSize, type LoraWeights, StableDiffusion } from "../../../src/engine/index.js";
import { concatLora, type LoraModule } from "../../../src/engine/models/lora.js";
import { invertDirect } from "../../../src/engine/pipelines/inversion.js";
import {
  jointSample,
  photoswap,
  planSwap,
  type SwapWindows,
  swapSession,
  variantStart,
} from "../../../src/engine/pipelines/photoswap.js";
import { alignTokens, promptTokens, wordIndices } from "../../../src/engine/pipelines/photoswap-tokens.js";
import { sampleLatents } from "../../../src/engine/pipelines/sample.js";
import { UserFacingError } from "../../../src/errors.js";
import { relError } from "../../helpers/golden.js";

const MODEL = "test/fixtures/models/sd2/model";
const SOURCE = "a photo of a cat";
const TARGET = "a photo of a sks dog";
const size: LatentSize = { height: 6, width: 10 };
const steps = 4;
const guidance = 7.5;
const ALL: SwapWindows = { phiSteps: 1, selfMapSteps: 3, crossSteps: 2 };
const NONE: SwapWindows = { phiSteps: 0, selfMapSteps: 0, crossSteps: 0 };

describe("Photoswap joint sampling on SD 2.x, non-square", () => {
  let sd: StableDiffusion;
  let ctx: { source: Float32Array; target: Float32Array; uncond: Float32Array };
  let lora: LoraWeights;
  const per = 4 * size.height * size.width;
  const xT = new GaussianRng(1).normal(per);
  const xT2 = new GaussianRng(2).normal(per);

  beforeAll(async () => {
    sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
    const n = 77 * sd.contextShape[1];
    const enc = await sd.encodeText([SOURCE, TARGET, ""]);
    ctx = { source: enc.slice(0, n), target: enc.slice(n, 2 * n), uncond: enc.slice(2 * n) };
    // A LoRA that does something: B drawn too, not left at peft's zero.
    lora = sd.newLora(2, 4, 3);
    const rng = new GaussianRng(4);
    for (const m of lora.values()) m.up.set(rng.normal(m.up.length).map((v) => v * 0.3));
  });
  afterAll(async () => {
    await sd?.release();
  });

  const mapper = () =>
    alignTokens(promptTokens(sd.tokenizer, SOURCE, "source"), promptTokens(sd.tokenizer, TARGET, "target"));
  const plain = (latents: Float32Array, contexts: Float32Array, withLora: boolean) =>
    sampleLatents(sd, {
      latents,
      size,
      contexts,
      uncond: ctx.uncond,
      guidance,
      steps,
      ...(withLora ? { lora } : {}),
    });

  it("leaves the source alone, gives a row without windows plain sampling with the LoRA, and swaps the other", async () => {
    const r = await jointSample(sd, {
      size,
      steps,
      guidance,
      xT,
      targets: [
        { xT, windows: ALL },
        { xT: xT2, windows: NONE },
      ],
      sourceContext: ctx.source,
      targetContext: ctx.target,
      uncond: ctx.uncond,
      mapper: mapper(),
      lora,
    });
    // Sampled alone the source is the base model's; the LoRA acts on the target rows only.
    expect(relError(r.source, await plain(xT, ctx.source, false))).toBeLessThan(1e-5);
    const alone = await plain(xT2, ctx.target, true);
    expect(relError(r.targets[1] as Float32Array, alone)).toBeLessThan(1e-5);
    // …and it does act there: without it that row comes out elsewhere.
    expect(relError(await plain(xT2, ctx.target, false), alone)).toBeGreaterThan(1e-3);
    // The swapped row is neither the target sampled alone nor the source.
    const swappedAlone = await plain(xT, ctx.target, true);
    expect(relError(r.targets[0] as Float32Array, swappedAlone)).toBeGreaterThan(1e-3);
    expect(relError(r.targets[0] as Float32Array, r.source)).toBeGreaterThan(1e-3);
    expect((r.targets[0] as Float32Array).every(Number.isFinite)).toBe(true);
  });

  it("blends over layers of two sizes: outside each mask the target is the source, exactly", async () => {
    const { control } = await swapSession(sd, { targets: 1, size, subjects: 1 });
    // One transformer layer per block: the literal pick spans two levels (PHOTOSWAP.md §11's rule).
    expect(control.blendGroups.map((g) => g.size)).toEqual([
      { height: 2, width: 3 },
      { height: 3, width: 5 },
    ]);
    const r = await jointSample(sd, {
      size,
      steps,
      guidance,
      xT,
      targets: [{ xT, windows: ALL }],
      sourceContext: ctx.source,
      targetContext: ctx.target,
      uncond: ctx.uncond,
      mapper: mapper(),
      blend: {
        sourceWords: [wordIndices(sd.tokenizer, SOURCE, "cat")],
        targetWords: [wordIndices(sd.tokenizer, TARGET, "sks")],
        // Random weights give flat maps (normalized values 0.9–1 here): a threshold in their range.
        threshold: 0.99,
        from: 1,
      },
      keepTrajectory: true,
    });
    expect(r.masks.length).toBe(steps - 1);
    expect(relError(r.source, await plain(xT, ctx.source, false))).toBeLessThan(1e-5);
    const hw = size.height * size.width;
    const last = r.masks[r.masks.length - 1]?.masks[1] as Uint8Array;
    const outside = [...last.keys()].filter((i) => last[i] === 0);
    expect(outside.length).toBeGreaterThan(0);
    expect(outside.length).toBeLessThan(hw);
    const target = r.targets[0] as Float32Array;
    for (const i of outside)
      for (let c = 0; c < 4; c++) expect(target[c * hw + i]).toBe(r.source[c * hw + i]);
  });
});

describe("Photoswap end to end on an inverted photo (sd1)", () => {
  let sd: StableDiffusion;
  const small: LatentSize = { height: 16, width: 16 };
  const per = 4 * 16 * 16;
  const photo = new GaussianRng(11).normal(per);
  const concept = (token: string, subject: string, seed: number) => {
    const lora = sd.newLora(2, 2, seed);
    const rng = new GaussianRng(seed + 100);
    for (const m of lora.values()) m.up.set(rng.normal(m.up.length).map((v) => v * 0.2));
    return { token, tokenId: sd.tokenizer.tokenize(token)[0] as number, subject, lora };
  };
  /** The photo's direct inversion under "a photo of a cat" at `steps` steps. */
  const invertPhoto = (steps: number) =>
    invertDirect(sd, { size: small, latents0: photo, prompt: "a photo of a cat", steps, guidance: 7.5 });

  beforeAll(async () => {
    sd = await StableDiffusion.load("test/fixtures/models/sd1/model", { device: "cpu", dtype: "fp32" });
  });
  afterAll(async () => {
    await sd?.release();
  });

  it("reconstructs the photo exactly (direct inversion) and batches variants as it samples them one by one", async () => {
    const source = await invertPhoto(4);
    const args = {
      source,
      subjects: [{ word: "cat", concept: concept("sks", "dog", 1) }],
      seeds: [0, 5],
      strengths: [{ selfOutputSteps: 2, selfMapSteps: 3, crossMapSteps: 2 }],
      variation: 0.2,
      blendThreshold: 0.3,
    };
    const together = await photoswap(sd, args);
    expect(together.targetPrompt).toBe("a photo of a sks dog");
    // Direct inversion: the source branch ends on the encoded photo itself.
    expect(together.source).toEqual(photo);
    expect(together.variants.map((v) => v.seed)).toEqual([0, 5]);
    const apart = await photoswap(sd, { ...args, maxBatch: 1 });
    together.variants.forEach((v, i) => {
      expect(relError(v.latents, apart.variants[i]?.latents as Float32Array)).toBeLessThan(1e-5);
    });
    // Seed 5 starts elsewhere than the inverted noise, and ends elsewhere.
    expect(variantStart(source.xT, 0, 0.2)).toBe(source.xT);
    expect(relError(variantStart(source.xT, 5, 0.2), source.xT)).toBeGreaterThan(0.05);
    expect(
      relError(together.variants[1]?.latents as Float32Array, together.variants[0]?.latents as Float32Array),
    ).toBeGreaterThan(1e-3);
  });

  it("swaps a repeated seed or strength once", async () => {
    const strength = { selfOutputSteps: 1, selfMapSteps: 1, crossMapSteps: 1 };
    const r = await photoswap(sd, {
      source: await invertPhoto(2),
      subjects: [{ word: "cat", concept: concept("sks", "dog", 1) }],
      seeds: [3, 0, 3],
      strengths: [strength, { ...strength }],
      variation: 0.2,
      blendThreshold: 0.3,
    });
    expect(r.variants.map((v) => [v.seed, v.strengths])).toEqual([
      [3, strength],
      [0, strength],
    ]);
  });

  it("swaps two subjects at once: one prompt, a token of each concept, a mask for each", async () => {
    const dog = concept("sks", "dog", 2);
    const fox = concept("olis", "fox", 3);
    const plan = planSwap(sd.tokenizer, "a cat and a bird on grass", [
      { word: "cat", concept: dog },
      { word: "bird", concept: fox },
    ]);
    expect(plan.targetPrompt).toBe("a sks dog and a olis fox on grass");
    // bos a [sks dog] and a [olis fox] on grass eos: the subjects' tokens keep their own maps.
    expect(plan.mapper.alphas.slice(0, 11)).toEqual([1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1]);
    expect(plan.sourceWords).toEqual([[2], [5]]);
    expect(plan.targetWords).toEqual([[2], [6]]);
    // Both concepts' LoRAs act at once: their sum, as one adapter of the summed rank.
    const both = concatLora([dog.lora, fox.lora]);
    const path = [...dog.lora.keys()][0] as string;
    const m = both.get(path);
    expect(m?.rank).toBe(4);
    const x = new GaussianRng(9).normal(m?.inF ?? 0);
    const delta = (l: LoraModule) => {
      const ax = Array.from({ length: l.rank }, (_, r) =>
        x.reduce((a, v, i) => a + (l.down[r * l.inF + i] as number) * v, 0),
      );
      return Array.from(
        { length: l.outF },
        (_, o) => (l.alpha / l.rank) * ax.reduce((a, v, r) => a + (l.up[o * l.rank + r] as number) * v, 0),
      );
    };
    const sum = delta(dog.lora.get(path) as LoraModule).map(
      (v, i) => v + (delta(fox.lora.get(path) as LoraModule)[i] as number),
    );
    expect(relError(delta(m as LoraModule), sum)).toBeLessThan(1e-6);
  });

  it("stops within a step of a cancel, in the second pass of a batched run too", async () => {
    const source = await invertPhoto(4);
    // Two variants one per UNet call: 2 passes × 4 steps; cancelled after the first step of the second.
    const controller = new AbortController();
    const seen: number[] = [];
    const run = photoswap(sd, {
      source,
      subjects: [{ word: "cat", concept: concept("sks", "dog", 5) }],
      seeds: [0, 1],
      strengths: [{ selfOutputSteps: 2, selfMapSteps: 3, crossMapSteps: 2 }],
      variation: 0.2,
      blendThreshold: 0.3,
      maxBatch: 1,
      signal: controller.signal,
      onStep: (step, total) => {
        seen.push(step);
        expect(total).toBe(8);
        if (step === 5) controller.abort();
      },
    });
    await expect(run).rejects.toThrow(CancelledError);
    await expect(run).rejects.toThrow("cancelled at Photoswap step 2/4");
    expect(seen).toEqual([1, 2, 3, 4, 5]);
  });

  it("refuses a subject that is not a word of the source prompt, and strengths past the steps, before sampling", async () => {
    const dog = concept("sks", "dog", 4);
    expect(() =>
      planSwap(sd.tokenizer, "a photo of a cat, sleeping", [{ word: "cat", concept: dog }]),
    ).toThrow(/the subject "cat" is not a word of the source prompt/);
    expect(() =>
      planSwap(sd.tokenizer, "a photo of a cat", [
        { word: "cat", concept: dog },
        { word: "cat", concept: concept("olis", "fox", 5) },
      ]),
    ).toThrow(/the subject "cat" is named twice/);
    const source = await invertPhoto(2);
    await expect(
      photoswap(sd, {
        source,
        subjects: [{ word: "cat", concept: dog }],
        seeds: [0],
        strengths: [{ selfOutputSteps: 3, selfMapSteps: 0, crossMapSteps: 0 }],
        variation: 0,
        blendThreshold: 0.3,
      }),
    ).rejects.toThrow(UserFacingError);
  });
});
