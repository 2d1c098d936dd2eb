/**
 * `bench photoswap`: Photoswap's stages on Stable Diffusion 1.5 shapes with random weights (timings do
 * not depend on weight values): concept learning (class images, then LoRA training; again with the class
 * images cached), direct inversion, null-text inversion, and both reconstructions' PSNR against the
 * decoded photo latents.
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
import type { InvertedSource } from "../../engine/pipelines/photoswap-types.js";
import { UserFacingError } from "../../errors.js";
import {
  CONCEPT_PRESET_NAMES,
  type ConceptPresetName,
  conceptOptions,
  DEFAULT_CONCEPT_PRESET,
  SWAP_GUIDANCE,
  SWAP_SAMPLING_STEPS,
} from "../../spec/swap.js";
import type { GpuMemorySampler } from "./gpu-memory.js";
import {
  BenchRun,
  type PipelineBenchFlags,
  parseStepsScale,
  pipelineBenchOptions,
} from "./pipeline-bench.js";
import { photo, StageClock, scaled } from "./timing.js";

export const PHOTOSWAP_CASES = ["concept", "invert-direct", "invert-null-text"] as const;
type Case = (typeof PHOTOSWAP_CASES)[number];

interface Flags extends PipelineBenchFlags {
  conceptPreset: ConceptPresetName;
  steps: string;
  inner: string;
  only?: string;
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
  return row;
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

export function photoswapBenchCommand(): Command {
  return pipelineBenchOptions(
    new Command("photoswap").description(
      "Photoswap on SD 1.5 shapes with random weights: concept learning, direct and null-text inversion",
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
        if (cases.includes("concept")) {
          result.concept = await benchConcept(sd, size, f.conceptPreset, scale, out, gpu);
          save();
        }
        if (cases.some((c) => c.startsWith("invert-"))) {
          result.inversion = await benchInversions(sd, size, steps, inner, scale, cases, out, gpu);
          save();
        }
        run.memoryLines();
      } finally {
        await run.close();
      }
    });
}
