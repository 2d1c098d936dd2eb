/**
 * The engine on non-square latents (6×10 and 10×6, images 48×80 and 80×48) against what must hold
 * exactly: transposing the input of the model whose k×k kernels are transposed transposes its output
 * (test/helpers/transpose.ts says why that, and not plain transposition, is the identity for a conv net
 * with attention), for the UNet, the VAE, txt2img, DDIM inversion, the loss and its gradients, an
 * Imagic train + render and concept learning; the gradient step against central finite differences; and
 * one compiled graph per shape. The tolerances are float32 summation-order differences (the two sides
 * add the same products in another order), measured with margin; the control (the same transposed input
 * through the *untransposed* model) must miss them by orders of magnitude, so a shape mix-up cannot pass.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaussianRng } from "../../src/engine/diffusion/rng.js";
import { type LatentSize, StableDiffusion } from "../../src/engine/index.js";
import { learnConcept, loadReferences } from "../../src/engine/pipelines/concept.js";
import { renderImagic, trainImagic } from "../../src/engine/pipelines/imagic.js";
import { ddimInvert } from "../../src/engine/pipelines/invert.js";
import { txt2img } from "../../src/engine/pipelines/txt2img.js";
import { imagicOptions } from "../../src/spec/imagic.js";
import { conceptOptions } from "../../src/spec/swap.js";
import { relError } from "../helpers/golden.js";
import { transposedCheckpoint, transposeHW } from "../helpers/transpose.js";

const SD1 = "test/fixtures/models/sd1/model";
const WIDE: LatentSize = { height: 6, width: 10 };
const TALL: LatentSize = { height: 10, width: 6 };
/** Images of WIDE latents: 48×80 pixels. */
const [H, W] = [48, 80];
/** One forward call, the same products summed in another order (measured: UNet 9e-7, VAE 2e-7). */
const SAME = 1e-5;
/**
 * Gradients: each sums products over every position, batch item and head, through the softmax's backward
 * with its cancellations (measured: d context 1.3e-5, d LoRA 1.0e-5).
 */
const SAME_GRADIENT = 1e-4;
/** Through guided DDIM steps or an inversion, or Adam steps, each feeding the next (measured ≤ 4e-6). */
const SAME_PIPELINE = 1e-4;

const tmp = mkdtempSync(join(tmpdir(), "nonsquare-"));
let sd: StableDiffusion;
let sdT: StableDiffusion;
let context: Float32Array;

/** Latents [n, 4, 6, 10] → [n, 4, 10, 6]. */
const tWide = (x: Float32Array) => transposeHW(x, WIDE.height, WIDE.width);
const noise = (n: number, seed: number) => new GaussianRng(seed).normal(n);

beforeAll(async () => {
  sd = await StableDiffusion.load(SD1, { device: "cpu", dtype: "fp32" });
  sdT = await StableDiffusion.load(transposedCheckpoint(SD1, join(tmp, "transposed")), {
    device: "cpu",
    dtype: "fp32",
  });
  context = await sd.encodeText(["a photo of a cat"]);
});
afterAll(async () => {
  await sd?.release();
  await sdT?.release();
  rmSync(tmp, { recursive: true, force: true });
});

describe("graphs per shape", () => {
  it("compiles one UNet graph per latent shape: two shapes, two graphs; the first shape again, none more", async () => {
    const dir = join(tmp, "graphs");
    const own = await StableDiffusion.load(SD1, { device: "cpu", dtype: "fp32", graphCacheDir: dir });
    try {
      const runs: Array<[LatentSize, number]> = [
        [WIDE, 1],
        [TALL, 2],
        [WIDE, 3],
      ];
      const out = [];
      for (const [size, seed] of runs) {
        out.push(await own.predictNoise(noise(4 * 60, seed), size, 500, context));
      }
      // Each compiled graph is a folder named after its key: the two shapes never share one.
      const unets = readdirSync(dir)
        .filter((d) => /_unet_/.test(d))
        .map((d) => /_unet_1_(\d+x\d+)_/.exec(d)?.[1])
        .sort();
      expect(unets).toEqual(["10x6", "6x10"]);
      // The WIDE graph run again computes what the shared engine's WIDE graph does.
      const shared = await sd.predictNoise(noise(4 * 60, 3), WIDE, 500, context);
      expect(relError(out[2] as Float32Array, shared)).toBeLessThan(SAME);
    } finally {
      await own.release();
    }
  });
});

describe("transposed input, transposed kernels: transposed output", () => {
  it("UNet: a batch of 2 at two timesteps; the untransposed model is the control", async () => {
    const x = noise(2 * 4 * 60, 1);
    const ctx = Float32Array.from([...context, ...context]);
    const wide = await sd.predictNoise(x, WIDE, [100, 700], ctx);
    const tall = await sdT.predictNoise(tWide(x), TALL, [100, 700], ctx);
    expect(relError(tall, tWide(wide))).toBeLessThan(SAME);
    const control = await sd.predictNoise(tWide(x), TALL, [100, 700], ctx);
    expect(relError(control, tWide(wide))).toBeGreaterThan(1e-2);
  });

  it("VAE: encode a 48×80 image and decode its latents", async () => {
    const image = Float32Array.from({ length: 3 * H * W }, (_, i) => Math.sin(i / 11) * Math.cos(i / 170));
    const wide = await sd.encodeImage(image, H, W);
    const tall = await sdT.encodeImage(transposeHW(image, H, W), W, H);
    expect(wide.size).toEqual(WIDE);
    expect(tall.size).toEqual(TALL);
    expect(relError(tall.mean, tWide(wide.mean))).toBeLessThan(SAME);
    expect(relError(tall.std, tWide(wide.std))).toBeLessThan(SAME);
    const decoded = await sd.decodeLatents(wide.mean, WIDE);
    const decodedT = await sdT.decodeLatents(tWide(wide.mean), TALL);
    expect(decoded).toHaveLength(3 * H * W);
    expect(relError(decodedT, transposeHW(decoded, H, W))).toBeLessThan(SAME);
  });

  it("txt2img: 4 guided DDIM steps at 48×80 from given latents", async () => {
    const latents = noise(4 * 60, 2);
    const o = { prompt: "a photo of a cat", negativePrompt: "blurry", steps: 4, guidance: 7.5 };
    const wide = await txt2img(sd, { ...o, height: H, width: W, latents });
    const tall = await txt2img(sdT, { ...o, height: W, width: H, latents: tWide(latents) });
    expect(wide.image).toHaveLength(3 * H * W);
    expect(relError(tall.latents, tWide(wide.latents))).toBeLessThan(SAME_PIPELINE);
    expect(relError(tall.image, transposeHW(wide.image, H, W))).toBeLessThan(SAME_PIPELINE);
  });

  it("DDIM inversion: 4 steps from encoded 48×80 latents", async () => {
    const x0 = noise(4 * 60, 3).map((v) => 0.8 * v);
    const wide = await ddimInvert(sd, { latents: x0, size: WIDE, context, steps: 4 });
    const tall = await ddimInvert(sdT, { latents: tWide(x0), size: TALL, context, steps: 4 });
    expect(tall.timesteps).toEqual(wide.timesteps);
    wide.latents.forEach((x, i) => {
      expect(relError(tall.latents[i] as Float32Array, tWide(x)), `step ${i + 1}`).toBeLessThan(
        SAME_PIPELINE,
      );
    });
  });

  it("the loss and its gradients w.r.t. the context and LoRA, batch 2", async () => {
    // Batch 2 and LoRA rank 2: the graphs Imagic's stages below use, compiled once.
    const lora = sd.newLora(2, 2, 5);
    // A non-zero B, so that A's gradient is not zero either.
    for (const m of lora.values()) m.up.set(noise(m.up.length, m.up.length).map((v) => 0.05 * v));
    const x0 = noise(2 * 4 * 60, 4);
    const eps = noise(2 * 4 * 60, 5);
    const t = [150, 600];
    const step = (model: StableDiffusion, size: LatentSize, transposed: boolean) => {
      const data = {
        latents0: transposed ? tWide(x0) : x0,
        noise: transposed ? tWide(eps) : eps,
        size,
        t,
        context,
      };
      return Promise.all([
        model.lossAndGrads({ ...data, wrt: ["context"] }),
        model.lossAndGrads({ ...data, lora, wrt: ["lora"] }),
      ]);
    };
    const [wide, wideLora] = await step(sd, WIDE, false);
    const [tall, tallLora] = await step(sdT, TALL, true);
    expect(relError(Float32Array.of(tall.loss), Float32Array.of(wide.loss))).toBeLessThan(SAME);
    expect(relError(Float32Array.of(tallLora.loss), Float32Array.of(wideLora.loss))).toBeLessThan(SAME);
    expect(relError(tall.dContext as Float32Array, wide.dContext as Float32Array)).toBeLessThan(
      SAME_GRADIENT,
    );
    const flat = (l: typeof lora | undefined) =>
      Float32Array.from([...(l?.values() ?? [])].flatMap((m) => [...m.down, ...m.up]));
    expect(relError(flat(tallLora.dLora), flat(wideLora.dLora))).toBeLessThan(SAME_GRADIENT);
  }, 180_000); // compiles the 4 loss graphs (2 models × context, LoRA) the tests below reuse
});

describe("the gradient step on non-square latents", () => {
  // 10×6 on the transposed-kernel model, whose sessions the Imagic test below shares (batch 2).
  it.each([
    ["6×10", WIDE, () => sd],
    ["10×6", TALL, () => sdT],
  ] as const)("d loss / d context at %s matches central finite differences", async (_, size, model) => {
    const n = 2 * 4 * size.height * size.width;
    const base = {
      latents0: noise(n, 6),
      noise: noise(n, 7),
      t: [400, 700],
      size,
      wrt: ["context"] as const,
    };
    const loss = async (c: Float32Array) => model().lossAndGrads({ ...base, context: c });
    const r = await loss(context);
    const g = r.dContext as Float32Array;
    const gNorm = Math.hypot(...g);
    const random = noise(g.length, 8);
    const rNorm = Math.hypot(...random);
    // Along the gradient, and along a direction mixing it with a random one.
    const directions = [g.map((v) => v / gNorm), g.map((v, i) => v / gNorm + (random[i] as number) / rNorm)];
    for (const d of directions) {
      const dNorm = Math.hypot(...d);
      const u = d.map((v) => v / dNorm);
      // A step moving the loss by ~1e-3 of itself: far above float32 noise (~1e3 ulps), still linear.
      const h = (1e-3 * r.loss) / gNorm;
      const at = async (s: number) => (await loss(context.map((v, i) => v + s * h * (u[i] as number)))).loss;
      const analytic = g.reduce((s, v, i) => s + v * (u[i] as number), 0);
      const numeric = ((await at(1)) - (await at(-1))) / (2 * h);
      // Stated tolerance 1 % (central differences of float32 losses ~1e3 ulps apart).
      expect(Math.abs(numeric - analytic) / Math.abs(analytic)).toBeLessThan(1e-2);
    }
  });
});

describe("Imagic on a 48×80 photo", () => {
  it("trains and renders the transpose of what the transposed-kernel model makes of the transposed photo", async () => {
    const photo = Float32Array.from({ length: 3 * H * W }, (_, i) => Math.sin(i / 9) * Math.cos(i / 310));
    const batch = 2;
    const steps = { embedding: 3, finetune: 2 };
    const drawn = Array.from({ length: steps.embedding + steps.finetune }, (_, k) =>
      noise(batch * 4 * 60, 20 + k),
    );
    const draws = (transposed: boolean) => {
      let k = 0;
      return {
        timesteps: () => [150 + 100 * k, 600 - 50 * k],
        noise: () => {
          const n = drawn[k++] as Float32Array;
          return transposed ? tWide(n) : n;
        },
      };
    };
    const options = imagicOptions("fast", {
      earlyStop: null,
      embedding: { steps: steps.embedding, batch, lr: 2e-2 },
      finetune: { steps: steps.finetune, batch, loraRank: 2, loraAlpha: 2, lr: 1e-2 },
    });
    const prompt = "a photo of a cat wearing a hat";
    const wide = await trainImagic(sd, {
      image: photo,
      height: H,
      width: W,
      prompt,
      options,
      draws: draws(false),
    });
    const tall = await trainImagic(sdT, {
      image: transposeHW(photo, H, W),
      height: W,
      width: H,
      prompt,
      options,
      draws: draws(true),
    });
    expect([wide.width, wide.height, tall.width, tall.height]).toEqual([W, H, H, W]);
    const all = (s: typeof wide) => [...s.losses.embedding, ...s.losses.finetune];
    expect(relError(Float32Array.from(all(tall)), Float32Array.from(all(wide)))).toBeLessThan(SAME_PIPELINE);
    expect(relError(tall.eOpt, wide.eOpt)).toBeLessThan(SAME_PIPELINE);

    const render = { etas: [0.5, 1.2], seeds: [3], guidance: 7.5, steps: 2, batch: 2 };
    const a = await renderImagic(sd, wide, render);
    const b = await renderImagic(sdT, tall, {
      ...render,
      noise: (seed, n) => tWide(new GaussianRng(seed).normal(n)),
    });
    expect(a.map((i) => [i.width, i.height])).toEqual([
      [W, H],
      [W, H],
    ]);
    a.forEach((img, k) => {
      const other = b[k] as (typeof b)[number];
      expect([other.width, other.height]).toEqual([H, W]);
      expect(relError(other.image, transposeHW(img.image, H, W)), `η ${img.eta}`).toBeLessThan(SAME_PIPELINE);
    });
    // η changes the image: the comparison is not between two blank results.
    expect(relError((a[1] as (typeof a)[number]).image, (a[0] as (typeof a)[number]).image)).toBeGreaterThan(
      1e-3,
    );
  }, 180_000);
});

describe("concept learning on 80×48 references", () => {
  it("learns the LoRA the transposed-kernel model learns from the transposed references", async () => {
    const photos = ["coffee.png", "chelsea.png"].map((f) => readFileSync(`test/fixtures/images/${f}`));
    const { images, size } = await loadReferences(sd, photos, { size: { width: W, height: H } });
    expect(size).toEqual({ width: W, height: H });
    expect(images.map((i) => i.length)).toEqual([3 * H * W, 3 * H * W]);
    const steps = 3;
    const drawn = Array.from({ length: steps }, (_, k) => noise(2 * 4 * 60, 40 + k));
    const draws = (transposed: boolean) => {
      let k = 0;
      return {
        noise: () => {
          const n = drawn[k++] as Float32Array;
          return transposed ? tWide(n) : n;
        },
        timesteps: () => [200 + 100 * k, 700 - 100 * k],
      };
    };
    // Batch 2, LoRA rank 2, no class images or token embedding: the LoRA loss graph compiled above.
    const options = conceptOptions("fast", {
      steps,
      batch: 2,
      loraRank: 2,
      loraAlpha: 2,
      lr: 1e-2,
      prior: null,
      textualInversion: null,
    });
    const wide = await learnConcept(sd, {
      references: images,
      size,
      subject: "dog",
      options,
      draws: draws(false),
    });
    const tall = await learnConcept(sdT, {
      references: images.map((i) => transposeHW(i, H, W)),
      size: { width: H, height: W },
      subject: "dog",
      options,
      draws: draws(true),
    });
    expect(relError(Float32Array.from(tall.losses), Float32Array.from(wide.losses))).toBeLessThan(
      SAME_PIPELINE,
    );
    const ups = (c: typeof wide) =>
      Float32Array.from([...(c.lora?.values() ?? [])].flatMap((m) => [...m.up]));
    const downs = (c: typeof wide) =>
      Float32Array.from([...(c.lora?.values() ?? [])].flatMap((m) => [...m.down]));
    expect(relError(ups(tall), ups(wide))).toBeLessThan(SAME_PIPELINE);
    expect(relError(downs(tall), downs(wide))).toBeLessThan(SAME_PIPELINE);
    // LoRA's B starts at zero: training moved it, so the comparison is not between two initial LoRAs.
    expect(ups(wide).some((v) => Math.abs(v) > 1e-4)).toBe(true);
  }, 180_000);
});
