/**
 * `bench photoswap`: Photoswap's stages on Stable Diffusion 1.5 shapes with random weights (timings do
 * not depend on weight values): concept learning (class images, then LoRA training; again with the class
 * images cached), direct inversion, null-text inversion, and both reconstructions' PSNR against the
 * decoded photo latents; the swap of `--variants` seed variants from the direct inversion (cold, then warm:
 * one UNet call per step for all of them), and a swap with a cached concept end to end (concept file →
 * new photo → encode → direct inversion → variants → decode → grid): the chat path once a subject is
 * learned, the issue's "≤ 10 s" goal.
 *
 * `--steps-scale 0.1` runs 10 % of the concept's training steps, of its class images' DDIM steps and of
 * null-text's sampling steps (at least 5 each) and extrapolates each stage: its first step (session
 * creation and warm-up) plus (steps − 1) × the median of its later steps. Null-text never stops early on
 * random weights (its losses stay far above 1e-5), so its times are for the full `--inner` steps.
 */
import { Command, Option } from "commander";
import type { StableDiffusion } from "../../engine/index.js";
import { learnConcept } from "../../engine/pipelines/concept.js";
import { deserializeConcept, serializeConcept } from "../../engine/pipelines/concept-file.js";
import { invertDirect, invertNullText, psnr, reconstructSource } from "../../engine/pipelines/inversion.js";
import { swapEdit, variantGrid } from "../../engine/pipelines/photoswap-edit.js";
import type { ConceptAdapter, InvertedSource } from "../../engine/pipelines/photoswap-types.js";
import { UserFacingError } from "../../errors.js";
import {
  CONCEPT_PRESET_NAMES,
  type ConceptPresetName,
  conceptOptions,
  DEFAULT_CONCEPT_PRESET,
  PAPER_STRENGTHS,
  SWAP_BLEND_THRESHOLD,
  SWAP_GUIDANCE,
  SWAP_SAMPLING_STEPS,
  SWAP_VARIATION,
} from "../../spec/swap.js";
import type { GpuMemorySampler } from "./gpu-memory.js";
import {
  BenchRun,
  type PipelineBenchFlags,
  parseStepsScale,
  pipelineBenchOptions,
} from "./pipeline-bench.js";
import { photo, StageClock, scaled } from "./timing.js";

export const PHOTOSWAP_CASES = [
  "concept",
  "invert-direct",
  "invert-null-text",
  "swap",
  "swap-cached",
] as const;
type Case = (typeof PHOTOSWAP_CASES)[number];

interface Flags extends PipelineBenchFlags {
  conceptPreset: ConceptPresetName;
  steps: string;
  inner: string;
  only?: string;
  variants: string;
  size?: string;
}

const PROMPT = "a photo of a cat";
const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

async function benchConcept(
  sd: StableDiffusion,
  size: number,
  preset: ConceptPresetName,
  scale: number,
  out: (s: string) => void,
  gpu: GpuMemorySampler,
) {
  const full = conceptOptions(preset);
  const prior = full.prior;
  const run = conceptOptions(preset, {
    steps: scaled(full.steps, scale),
    ...(prior ? { prior: { steps: scaled(prior.steps, scale) } } : {}),
  });
  // Three references: differently phased copies of the synthetic photo.
  const references = [0, 1, 2].map((k) =>
    photo(size).map((v, i) => (k === 0 ? v : v * Math.cos(k + i / 5000))),
  );
  const learn = async (subject: string, label: string) => {
    const clock = new StageClock();
    clock.begin("class-images");
    gpu.stage(`concept/${label}/class-images`);
    const t0 = performance.now();
    const concept = await learnConcept(sd, {
      references,
      size,
      subject,
      options: run,
      onProgress: (p) => {
        if (p.stage === "encode" && p.step === p.total) {
          clock.begin("concept");
          gpu.stage(`concept/${label}/train`);
        }
        if (p.stage !== "encode") clock.mark(p);
      },
    });
    return { concept, clock, ms: performance.now() - t0 };
  };
  const cold = await learn("dog", "cold");
  const chunks = prior ? Math.ceil(prior.images / Math.min(4, prior.images)) : 0;
  const classImages = cold.clock.extrapolate("class-images", prior ? chunks * prior.steps : 0);
  const train = cold.clock.extrapolate("concept", full.steps);
  const encodeMs = (cold.concept.seconds?.encode ?? 0) * 1000;
  // The same subject again: the class images come from the cache, the sessions are warm.
  const warm = await learn("dog", "cached");
  const warmTrain = warm.clock.extrapolate("concept", full.steps);
  const t0 = performance.now();
  const bytes = serializeConcept(cold.concept);
  deserializeConcept(bytes);
  const fileMs = performance.now() - t0;
  const row = {
    preset,
    steps: full.steps,
    ran: train.ran,
    classImages: prior ? { images: prior.images, steps: prior.steps, ms: classImages } : null,
    textualInversion: full.textualInversion !== null,
    loraRank: full.loraRank,
    ms: {
      classImages,
      encode: encodeMs,
      train,
      total: { cold: classImages.cold + encodeMs + train.cold, cachedClassImages: encodeMs + warmTrain.warm },
      file: fileMs,
    },
    conceptBytes: bytes.length,
  };
  out(
    `concept ${preset}: ${full.steps} steps, rank ${full.loraRank}${full.textualInversion ? ", textual inversion" : ""}, ` +
      `${prior ? `${prior.images} class images × ${prior.steps} DDIM steps` : "no prior preservation"}\n` +
      `  class images ${sec(classImages.cold)} (${classImages.perStep.toFixed(0)} ms per sampling step of ${Math.min(4, prior?.images ?? 0)}, first ${sec(classImages.first)})  ` +
      `encode ${sec(encodeMs)}  training ${sec(train.warm)} (${train.perStep.toFixed(0)} ms/step, first ${sec(train.first)})\n` +
      `  references → concept: ${sec(row.ms.total.cold)} cold; ${sec(row.ms.total.cachedClassImages)} with the class images cached and warm sessions;  ` +
      `concept file ${(bytes.length / 1024 ** 2).toFixed(2)} MiB`,
  );
  return { row, concept: cold.concept };
}

async function benchInversions(
  sd: StableDiffusion,
  size: number,
  steps: number,
  inner: number,
  scale: number,
  cases: readonly Case[],
  out: (s: string) => void,
  gpu: GpuMemorySampler,
) {
  const t0 = performance.now();
  const { mean: latents0, size: latentSize } = await sd.encodeImage(photo(size), size, size);
  const encodeMs = performance.now() - t0;
  const decoded = await sd.decodeLatents(latents0, latentSize);
  const report = async (source: InvertedSource) => {
    const rec = await reconstructSource(sd, source);
    return psnr(await sd.decodeLatents(rec.latents, latentSize), decoded);
  };
  const rows: Record<string, unknown> = { encodeMs };
  if (cases.includes("invert-direct")) {
    gpu.stage("invert-direct");
    const run = () =>
      invertDirect(sd, { latents0, size: latentSize, prompt: PROMPT, steps, guidance: SWAP_GUIDANCE });
    const c0 = performance.now();
    await run();
    const coldMs = performance.now() - c0;
    const w0 = performance.now();
    const source = await run();
    const warmMs = performance.now() - w0;
    const db = await report(source);
    rows.direct = { steps, coldMs, warmMs, psnr: db };
    out(
      `direct inversion, ${steps} steps: ${sec(warmMs)} (${sec(coldMs)} cold);  reconstruction PSNR vs the decoded photo latents ${db} dB`,
    );
  }
  if (cases.includes("invert-null-text")) {
    gpu.stage("invert-null-text");
    const ran = scaled(steps, scale);
    const clock = new StageClock();
    clock.begin("invert");
    const r = await invertNullText(sd, {
      latents0,
      size: latentSize,
      prompt: PROMPT,
      steps: ran,
      guidance: SWAP_GUIDANCE,
      innerSteps: inner,
      onProgress: (p) => {
        clock.mark(p);
        if (p.stage === "invert" && p.step === p.total) clock.begin("null-text");
      },
    });
    const invert = clock.extrapolate("invert", steps);
    const nullText = clock.extrapolate("null-text", steps);
    const innerTaken = r.losses.reduce((a, l) => a + l.length, 0) / r.losses.length;
    const db = await report(r.source);
    rows.nullText = { steps, ran, inner, innerTaken, invert, nullText, psnr: db };
    out(
      `null-text inversion, ${steps} steps × ≤ ${inner} inner (took ${innerTaken.toFixed(1)} on average): ` +
        `${sec(invert.warm + nullText.warm)} warm, ${sec(invert.cold + nullText.cold)} cold (${nullText.perStep.toFixed(0)} ms per sampling step)` +
        `;  reconstruction PSNR vs the decoded photo latents at ${ran} steps ${db.toFixed(2)} dB (random weights: meaningless beyond "it runs")`,
    );
  }
  return rows;
}

/**
 * The swap of `variants` seeds from the direct inversion, twice (cold: sessions built; warm), and a swap
 * with the concept read back from its file on a new photo, end to end with the grid.
 */
async function benchSwap(
  sd: StableDiffusion,
  size: number,
  steps: number,
  variants: number,
  concept: ConceptAdapter,
  cases: readonly Case[],
  out: (s: string) => void,
  gpu: GpuMemorySampler,
) {
  const args = {
    height: size,
    width: size,
    subject: "cat",
    concept,
    inversion: "direct" as const,
    steps,
    guidance: SWAP_GUIDANCE,
    seeds: Array.from({ length: variants }, (_, i) => i),
    strengths: [
      {
        selfOutputSteps: Math.min(PAPER_STRENGTHS.selfOutputSteps, steps),
        selfMapSteps: Math.min(PAPER_STRENGTHS.selfMapSteps, steps),
        crossMapSteps: Math.min(PAPER_STRENGTHS.crossMapSteps, steps),
      },
    ],
    variation: SWAP_VARIATION,
    blendThreshold: SWAP_BLEND_THRESHOLD,
    batch: variants,
  };
  const rows: Record<string, unknown> = {};
  if (cases.includes("swap")) {
    const image = photo(size);
    const { mean: latents0, size: latentSize } = await sd.encodeImage(image, size, size);
    const inverted = await invertDirect(sd, {
      latents0,
      size: latentSize,
      prompt: PROMPT,
      steps,
      guidance: SWAP_GUIDANCE,
    });
    gpu.stage("swap/cold");
    const cold = await swapEdit(sd, { ...args, image, inverted });
    gpu.stage("swap/warm");
    const warm = await swapEdit(sd, { ...args, image, inverted });
    rows.swap = { variants, steps, cold: cold.seconds, warm: warm.seconds };
    out(
      `swap of ${variants} variants × ${steps} steps (one UNet call of ${2 * (variants + 1)} rows per step): ${sec(warm.seconds.swap * 1000)} warm ` +
        `(${((warm.seconds.swap / steps) * 1000).toFixed(0)} ms/step), ${sec(cold.seconds.swap * 1000)} cold;  decode ${sec(warm.seconds.decode * 1000)}`,
    );
  }
  if (cases.includes("swap-cached")) {
    gpu.stage("swap-cached");
    const bytes = serializeConcept({
      ...concept,
      modelId: sd.modelId,
      contextDim: sd.contextShape[1],
      options: conceptOptions(DEFAULT_CONCEPT_PRESET),
      references: 1,
      losses: [],
    });
    const t0 = performance.now();
    const cached = deserializeConcept(bytes);
    // A new photo: nothing of it is cached, only the concept and the sessions.
    const image = photo(size).map((v, i) => v * Math.cos(i / 7000));
    const r = await swapEdit(sd, { ...args, image, concept: cached });
    let gridMs: number | undefined = performance.now();
    try {
      await variantGrid(r.variants);
      gridMs = performance.now() - gridMs;
    } catch {
      gridMs = undefined; // no sharp in the GPU bundle (scripts/gpu-bundle.sh): grids are timed on the CPU
    }
    const totalMs = performance.now() - t0;
    rows.cached = { variants, steps, seconds: r.seconds, gridMs, totalMs };
    out(
      `swap with a cached concept, end to end: ${sec(totalMs)} (encode ${sec(r.seconds.encode * 1000)}, direct inversion ${sec(r.seconds.invert * 1000)}, ` +
        `${variants} variants ${sec(r.seconds.swap * 1000)}, decode ${sec(r.seconds.decode * 1000)}, grid ${gridMs === undefined ? "not timed (no sharp)" : sec(gridMs)})`,
    );
  }
  return rows;
}

export function photoswapBenchCommand(): Command {
  return pipelineBenchOptions(
    new Command("photoswap").description(
      "Photoswap on SD 1.5 shapes with random weights: concept learning, both inversions, the swap, a cached-concept swap end to end",
    ),
  )
    .addOption(
      new Option("--concept-preset <name>", "concept learning preset")
        .choices([...CONCEPT_PRESET_NAMES])
        .default(DEFAULT_CONCEPT_PRESET),
    )
    .option("--steps <n>", "DDIM steps of the inversions", String(SWAP_SAMPLING_STEPS))
    .option("--inner <n>", "null-text's inner steps per sampling step (official 10)", "10")
    .option("--only <cases>", `comma-separated cases (${PHOTOSWAP_CASES.join(", ")}); default all`)
    .option("--variants <n>", "seed variants of the swap cases (one UNet call for all)", "4")
    .option("--size <pixels>", "image side (default 512; 64 with --tiny)")
    .action(async (f: Flags) => {
      const scale = parseStepsScale(f);
      const steps = Number(f.steps);
      const inner = Number(f.inner);
      for (const [flag, v] of [
        ["--steps", steps],
        ["--inner", inner],
      ] as const) {
        if (!Number.isInteger(v) || v < 1 || v > 1000)
          throw new UserFacingError(`${flag} must be a whole number from 1 to 1000`);
      }
      const variants = Number(f.variants);
      if (!Number.isInteger(variants) || variants < 1 || variants > 16)
        throw new UserFacingError(`--variants must be a whole number from 1 to 16, got ${f.variants}`);
      const size = f.size ? Number(f.size) : f.tiny ? 64 : 512;
      if (!Number.isInteger(size) || size < 64 || size % 64 !== 0) {
        throw new UserFacingError(`--size must be a multiple of 64, got ${f.size}`);
      }
      const cases = (f.only ? f.only.split(",").map((c) => c.trim()) : [...PHOTOSWAP_CASES]) as Case[];
      const unknown = cases.filter((c) => !(PHOTOSWAP_CASES as readonly string[]).includes(c));
      if (unknown.length > 0)
        throw new UserFacingError(
          `--only: unknown case(s) ${unknown.join(", ")} (${PHOTOSWAP_CASES.join(", ")})`,
        );
      const out = (s: string) => process.stdout.write(`${s}\n`);
      const run = await BenchRun.open("photoswap", f, out, size);
      const { sd, gpu, result } = run;
      out(run.describe(`${size}²`));
      result.size = size;
      const save = () => run.save();
      try {
        let learned: ConceptAdapter | undefined;
        if (cases.includes("concept")) {
          const c = await benchConcept(sd, size, f.conceptPreset, scale, out, gpu);
          result.concept = c.row;
          learned = c.concept;
          save();
        }
        if (cases.some((c) => c.startsWith("invert-"))) {
          result.inversion = await benchInversions(sd, size, steps, inner, scale, cases, out, gpu);
          save();
        }
        if (cases.some((c) => c.startsWith("swap"))) {
          // The learned concept when this run learned one; else an adapter of the preset's rank (the swap's
          // cost does not depend on its values).
          const rank = conceptOptions(f.conceptPreset).loraRank;
          const concept = learned ?? {
            token: "sks",
            tokenId: sd.tokenizer.tokenize("sks")[0] as number,
            subject: "dog",
            lora: sd.newLora(rank, rank, 1),
          };
          Object.assign(result, await benchSwap(sd, size, steps, variants, concept, cases, out, gpu));
          save();
        }
        run.memoryLines();
      } finally {
        await run.close();
      }
    });
}
