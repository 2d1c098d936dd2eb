/**
 * The joint sampler (photoswap.ts) where the official goldens do not reach: the SD 2.x fixture
 * (v-prediction, linear projections, per-level heads, one layer per block) at non-square latents, K
 * target rows side by side, a concept's LoRA on the target rows only, and a blend whose layers differ in
 * size. Exactness against the official code is test/engine/photoswap-parity.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { type LatentSize, type LoraWeights, StableDiffusion } from "../../../src/engine/index.js";
import { jointSample, type SwapWindows, swapSession } from "../../../src/engine/pipelines/photoswap.js";
import { alignTokens, promptTokens, wordIndices } from "../../../src/engine/pipelines/photoswap-tokens.js";
import { sampleLatents } from "../../../src/engine/pipelines/sample.js";
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
