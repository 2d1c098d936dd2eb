/**
 * Concept learning on the sd1 fixture: the loss falls on fixed draws and the learned concept changes what
 * the UNet computes for the instance prompt; the concept file round-trips bit for bit; cancellation stops
 * within a step; bad inputs get one clear line; class images are generated once.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { CancelledError } from "../../../src/engine/errors.js";
import type { StableDiffusion } from "../../../src/engine/index.js";
import { Trainer } from "../../../src/engine/optim/trainer.js";
import {
  type Concept,
  type ConceptProgress,
  checkConceptModel,
  conceptTokenId,
  encodeWithConcepts,
  instancePrompt,
  learnConcept,
  loadReferences,
} from "../../../src/engine/pipelines/concept.js";
import { deserializeConcept, serializeConcept } from "../../../src/engine/pipelines/concept-file.js";
import { UserFacingError } from "../../../src/errors.js";
import {
  type ConceptOptions,
  type ConceptOverrides,
  conceptCacheKey,
  conceptOptions,
} from "../../../src/spec/swap.js";
import { loadFixtureModel, SIZE, smoothPhoto } from "./imagic-fixture.js";

let sd: StableDiffusion;
const photo = smoothPhoto();
const photo2 = photo.map((v, i) => -v * Math.cos(i / 300));

/**
 * Small and fast: 2 class images at 3 DDIM steps, a few steps of rank 4, with textual inversion, so that
 * the tests share one compiled loss graph (batch 2: a reference and a class image; LoRA and context
 * gradients).
 */
const options = (o: ConceptOverrides = {}): ConceptOptions =>
  conceptOptions("fast", { steps: 4, prior: { images: 2, steps: 3 }, textualInversion: { lr: 1e-2 }, ...o });

/** Fixed draws (two timesteps per step: the reference's and the class image's, one noise). */
const FIXED_T = [150, 600];
const FIXED_NOISE = new GaussianRng(99).normal(FIXED_T.length * 4 * 8 * 8);
const fixedDraws = { timesteps: () => [...FIXED_T], noise: () => FIXED_NOISE };

beforeAll(async () => {
  sd = await loadFixtureModel();
});
afterAll(async () => {
  await sd?.release();
});

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

describe("learnConcept on the fixture model", () => {
  let concept: Concept;
  const seen: ConceptProgress[] = [];

  beforeAll(async () => {
    concept = await learnConcept(sd, {
      references: [photo, photo2],
      size: SIZE,
      subject: "dog",
      draws: fixedDraws,
      onProgress: (p) => seen.push(p),
      options: options({ steps: 8, lr: 1e-2 }),
    });
  });

  it("lowers its loss on fixed draws, reporting each stage", () => {
    const l = concept.losses;
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(l).toHaveLength(8);
    expect(l.at(-1) as number).toBeLessThan(0.99 * (l[0] as number));
    expect(mean(l.slice(-3))).toBeLessThan(mean(l.slice(0, 3)));
    expect(seen.filter((p) => p.stage === "class-images").map((p) => p.step)).toEqual([1, 2, 3]);
    expect(seen.filter((p) => p.stage === "encode")).toHaveLength(2);
    const train = seen.filter((p) => p.stage === "concept");
    expect(train.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(train.map((p) => p.loss)).toEqual(l);
    expect(train.at(-1)?.etaSeconds).toBe(0);
  });

  it("the learned token and LoRA change the UNet's output for the instance prompt", async () => {
    const prompt = instancePrompt("sks", "dog");
    const base = await sd.encodeText([prompt]);
    const learned = await encodeWithConcepts(sd, [prompt], [concept]);
    const d = sd.contextShape[1];
    // The learned row enters at the token (position 4): the context differs from there on only.
    expect(maxAbsDiff(learned.subarray(0, 4 * d), base.subarray(0, 4 * d))).toBe(0);
    expect(maxAbsDiff(learned.subarray(4 * d, 5 * d), base.subarray(4 * d, 5 * d))).toBeGreaterThan(1e-3);
    const size = { height: 8, width: 8 };
    const x = new GaussianRng(4).normal(4 * 8 * 8);
    const plain = await sd.predictNoise(x, size, 400, base);
    const withToken = await sd.predictNoise(x, size, 400, learned);
    const withBoth = await sd.predictNoise(x, size, 400, learned, { lora: concept.lora });
    const scale = Math.max(...plain.map(Math.abs));
    expect(maxAbsDiff(withToken, plain) / scale).toBeGreaterThan(1e-4);
    expect(maxAbsDiff(withBoth, withToken) / scale).toBeGreaterThan(1e-4);
    // Prompts without the token encode as the text encoder does.
    expect(Array.from(await encodeWithConcepts(sd, ["a photo of a dog"], [concept]))).toEqual(
      Array.from(await sd.encodeText(["a photo of a dog"])),
    );
  });

  it("encodes several concepts' tokens in one prompt, and refuses two concepts with one token", async () => {
    // A second subject taught as "ohwx" (one token in CLIP's vocabulary), with its own row.
    const other = {
      ...concept,
      token: "ohwx",
      tokenId: conceptTokenId(sd, "ohwx", "cat"),
      embedding: (concept.embedding as Float32Array).map((v) => -v),
    };
    const d = sd.contextShape[1];
    const prompts = ["a photo of sks dog and ohwx cat", "a photo of sks dog"];
    const both = await encodeWithConcepts(sd, prompts, [concept, other]);
    const first = await encodeWithConcepts(sd, prompts, [concept]);
    // "ohwx" is token 7 of the first prompt: up to it both encodings agree, from it on they differ.
    expect(maxAbsDiff(both.subarray(0, 7 * d), first.subarray(0, 7 * d))).toBe(0);
    expect(maxAbsDiff(both.subarray(7 * d, 8 * d), first.subarray(7 * d, 8 * d))).toBeGreaterThan(1e-3);
    expect(Array.from(both.subarray(77 * d))).toEqual(Array.from(first.subarray(77 * d)));
    await expect(
      encodeWithConcepts(sd, prompts, [concept, { ...other, token: "sks", tokenId: concept.tokenId }]),
    ).rejects.toThrow(
      'two concepts in one swap both use the token "sks": learn one of them with another token',
    );
  });

  it("round-trips through its file bit for bit and refuses another model's concept", () => {
    const bytes = serializeConcept(concept);
    const back = deserializeConcept(bytes);
    expect(back).toEqual(concept);
    expect(Buffer.compare(Buffer.from(serializeConcept(back)), Buffer.from(bytes))).toBe(0);
    expect(back.embedding?.length).toBe(sd.contextShape[1]);
    expect(() => checkConceptModel(sd, back)).not.toThrow();
    expect(() =>
      checkConceptModel(sd, { ...back, modelId: "stable-diffusion-v1-5/stable-diffusion-v1-5" }),
    ).toThrow(
      `this concept was learned on model "stable-diffusion-v1-5/stable-diffusion-v1-5"; the engine runs "${sd.modelId}": learn it again on this model`,
    );
    expect(() => deserializeConcept(bytes.subarray(0, 100))).toThrow(/^not a usable concept file: /);
  });
});

describe("concept learning details", () => {
  it("generates the class images once per model, subject and settings", async () => {
    const o = options({ steps: 1, seed: 5 });
    const run = async () => {
      const stages: string[] = [];
      await learnConcept(sd, {
        references: [photo],
        size: SIZE,
        subject: "cat",
        options: o,
        onProgress: (p) => stages.push(p.stage),
      });
      return stages.filter((s) => s === "class-images").length;
    };
    expect(await run()).toBe(3);
    expect(await run()).toBe(0);
  });

  it("prior preservation: each step trains a reference under the instance prompt beside a class image under the class prompt", async () => {
    const seen: { latents0: Float32Array; context: Float32Array; rows: number }[] = [];
    const real = Trainer.prototype.step;
    const spy = vi.spyOn(Trainer.prototype, "step").mockImplementation(function (this: Trainer, a) {
      seen.push({ latents0: a.latents0.slice(), context: a.context.slice(), rows: a.t.length });
      return real.call(this, a);
    });
    try {
      await learnConcept(sd, {
        references: [photo],
        size: SIZE,
        subject: "dog",
        options: options({ steps: 3, prior: { images: 2, steps: 3 }, textualInversion: null }),
      });
    } finally {
      spy.mockRestore();
    }
    const ctx = 77 * sd.contextShape[1];
    const instance = await sd.encodeText([instancePrompt("sks", "dog")]);
    const classContext = await sd.encodeText(["a photo of dog"]);
    const reference = (await sd.encodeImage(photo, SIZE, SIZE)).mean;
    const per = reference.length;
    expect(seen).toHaveLength(3);
    for (const step of seen) {
      // One batch, one loss (a mean over its rows): the reference and the class image weigh the same.
      expect(step.rows).toBe(2);
      expect(Array.from(step.context.subarray(0, ctx))).toEqual(Array.from(instance));
      expect(Array.from(step.context.subarray(ctx))).toEqual(Array.from(classContext));
      expect(Array.from(step.latents0.subarray(0, per))).toEqual(Array.from(reference));
    }
    // The two generated class images in turn, neither of them the reference.
    const [c1, c2, c3] = seen.map((s) => s.latents0.subarray(per)) as [
      Float32Array,
      Float32Array,
      Float32Array,
    ];
    expect(Array.from(c3)).toEqual(Array.from(c1));
    expect(maxAbsDiff(c1, c2)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(c1, reference)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(c2, reference)).toBeGreaterThan(1e-3);
  });

  it("without prior preservation or textual inversion: LoRA only, on the references alone", async () => {
    const stages = new Set<string>();
    const c = await learnConcept(sd, {
      references: [photo, photo2],
      size: SIZE,
      subject: "dog",
      options: options({ steps: 2, batch: 2, prior: null, textualInversion: null }),
      onProgress: (p) => stages.add(p.stage),
    });
    expect(c.embedding).toBeUndefined();
    expect(c.losses).toHaveLength(2);
    expect([...stages]).toEqual(["encode", "concept"]);
    expect(deserializeConcept(serializeConcept(c))).toEqual(c);
  });

  it("stops within a step of a cancel, in training and while generating class images", async () => {
    const controller = new AbortController();
    const training = learnConcept(sd, {
      references: [photo],
      size: SIZE,
      subject: "dog",
      options: options({ steps: 6 }),
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === "concept" && p.step === 2) controller.abort();
      },
    });
    await expect(training).rejects.toThrow(CancelledError);
    await expect(training).rejects.toThrow("cancelled at concept step 3/6");
    const again = new AbortController();
    const generating = learnConcept(sd, {
      references: [photo],
      size: SIZE,
      subject: "bird",
      options: options({ prior: { images: 2, steps: 5 } }),
      signal: again.signal,
      onProgress: (p) => {
        if (p.stage === "class-images" && p.step === 1) again.abort();
      },
    });
    await expect(generating).rejects.toThrow("cancelled at class image batch 1/1 step 2/5");
  });

  it("refuses bad inputs with one clear line", async () => {
    const learn = (o: Partial<Parameters<typeof learnConcept>[1]>) =>
      learnConcept(sd, { references: [photo], size: SIZE, subject: "dog", options: options(), ...o });
    await expect(learn({ references: [] })).rejects.toThrow(
      "a concept is learned from 1 to 5 reference photos of the subject; got 0",
    );
    await expect(learn({ references: Array(6).fill(photo) })).rejects.toThrow("got 6");
    await expect(learn({ options: { ...options(), token: "qzxvkj" } })).rejects.toThrow(
      /the concept token "qzxvkj" is \d tokens for this model's tokenizer; it must be one rare token/,
    );
    await expect(learn({ subject: "sks" })).rejects.toThrow("must not be the subject word itself");
    await expect(learn({ subject: "  " })).rejects.toThrow("the subject is empty");
    expect(() => conceptOptions("fast", { steps: 0, lr: -1, loraRank: 1.5 })).toThrow(
      "concept settings: concept steps must be a whole number from 1 to 5000 (got 0); concept learning rate must be a number > 0 and ≤ 1 (got -1); concept LoRA rank must be a whole number from 1 to 128 (got 1.5)",
    );
    expect(() => conceptOptions("nope" as "fast")).toThrow('unknown concept preset "nope"');
    expect(conceptTokenId(sd, "sks", "dog")).toBe(48136);
  });

  it("loads 1–5 references as square crops in content order, naming a reference that is not a photo", async () => {
    const chelsea = readFileSync("test/fixtures/images/chelsea.png");
    const coffee = readFileSync("test/fixtures/images/coffee.png");
    const a = await loadReferences(sd, [chelsea, coffee], { size: SIZE });
    const b = await loadReferences(sd, [coffee, chelsea], { size: SIZE });
    expect(a.size).toBe(SIZE);
    expect(a.hashes).toEqual(b.hashes);
    expect(a.images.map((i) => i.length)).toEqual([3 * SIZE * SIZE, 3 * SIZE * SIZE]);
    expect(Array.from(a.images[0] as Float32Array)).toEqual(Array.from(b.images[0] as Float32Array));
    await expect(loadReferences(sd, [chelsea, new TextEncoder().encode("not an image")])).rejects.toThrow(
      /^reference photo 2: /,
    );
    await expect(loadReferences(sd, [])).rejects.toThrow(UserFacingError);
    await expect(loadReferences(sd, Array(6).fill(chelsea))).rejects.toThrow("got 6");
  });

  it("keys the cache by the reference set, subject, settings and model", () => {
    const spec = { references: ["a1", "b2"], subject: "dog", options: options(), modelId: "m" };
    const key = conceptCacheKey(spec);
    expect(conceptCacheKey({ ...spec, references: ["b2", "a1"] })).toBe(key);
    expect(conceptCacheKey({ ...spec, options: structuredClone(spec.options) })).toBe(key);
    for (const other of [
      { ...spec, references: ["a1"] },
      { ...spec, subject: "cat" },
      { ...spec, options: options({ lr: 1e-3 }) },
      { ...spec, options: options({ textualInversion: { lr: 1e-3 } }) },
      { ...spec, modelId: "n" },
    ]) {
      expect(conceptCacheKey(other)).not.toBe(key);
    }
  });
});
