/**
 * `edit concept`: learn a Photoswap concept (a rare token for a new subject, DreamBooth-style LoRA, optional
 * textual inversion) from 1–5 reference photos and write it as a concept file, which `edit swap --concept`
 * swaps into any photo. Every input is checked before the model is touched.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { probeImage } from "../../engine/image.js";
import type { StableDiffusion } from "../../engine/index.js";
import {
  type Concept,
  conceptTokenId,
  learnConcept,
  loadReferences,
} from "../../engine/pipelines/concept.js";
import { serializeConcept } from "../../engine/pipelines/concept-file.js";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import {
  CONCEPT_PRESET_NAMES,
  type ConceptOptions,
  type ConceptOverrides,
  type ConceptPresetName,
  conceptOptions,
  DEFAULT_CONCEPT_PRESET,
  MAX_REFERENCES,
  MIN_REFERENCES,
} from "../../spec/swap.js";
import {
  type DeviceFlag,
  type DtypeFlag,
  deviceOption,
  dtypeOption,
  type TrainDtypeFlag,
  trainDtypeOption,
} from "../options.js";
import { collect, num, openModel, progressReporter, readInput } from "./shared.js";

/** The concept-learning flags `edit concept` and `edit swap` share. */
export interface ConceptFlags {
  ref: string[];
  conceptPreset: ConceptPresetName;
  conceptSteps?: string;
  token?: string;
  textualInversion?: boolean;
  prior: boolean;
  conceptSeed?: string;
}

export function addConceptOptions(c: Command): Command {
  return c
    .option(
      "--ref <file>",
      `a reference photo of the new subject (${MIN_REFERENCES}–${MAX_REFERENCES}; repeat the flag)`,
      collect,
      [],
    )
    .addOption(
      new Option("--concept-preset <name>", "concept learning schedule")
        .choices(CONCEPT_PRESET_NAMES)
        .default(DEFAULT_CONCEPT_PRESET),
    )
    .option("--concept-steps <n>", "LoRA (and embedding) steps (default: the preset's)")
    .option("--token <word>", 'the rare single token the subject is learned as (default "sks")')
    .option("--textual-inversion", "also learn the token's embedding (default: the preset's)")
    .option("--no-textual-inversion", "do not learn the token's embedding")
    .option("--no-prior", "no prior preservation (no class images)")
    .option("--concept-seed <n>", "seed of the concept's timesteps, noise, LoRA init and class images");
}

/** The reference photos, read and probed, and the concept settings: everything checked without the model. */
export async function conceptInputs(
  f: ConceptFlags,
): Promise<{ photos: Uint8Array[]; options: ConceptOptions }> {
  if (f.ref.length < MIN_REFERENCES || f.ref.length > MAX_REFERENCES) {
    throw new UserFacingError(
      `give ${MIN_REFERENCES} to ${MAX_REFERENCES} reference photos of the new subject (--ref, repeated); got ${f.ref.length}`,
    );
  }
  const photos: Uint8Array[] = [];
  for (const file of f.ref) {
    const bytes = readInput(file, "--ref");
    await probeImage(bytes).catch((e: Error) => {
      throw new UserFacingError(`--ref ${file}: ${e.message}`);
    });
    photos.push(bytes);
  }
  const overrides: ConceptOverrides = {};
  const steps = num("--concept-steps", f.conceptSteps);
  if (steps !== undefined) overrides.steps = steps;
  if (f.token !== undefined) overrides.token = f.token;
  const seed = num("--concept-seed", f.conceptSeed);
  if (seed !== undefined) overrides.seed = seed;
  if (!f.prior) overrides.prior = null;
  if (f.textualInversion === false) overrides.textualInversion = null;
  if (f.textualInversion === true) overrides.textualInversion = {};
  return { photos, options: conceptOptions(f.conceptPreset, overrides) };
}

/** Learns the concept on a loaded model, with progress bars. */
export async function learnFromFlags(
  sd: StableDiffusion,
  inputs: { photos: Uint8Array[]; options: ConceptOptions },
  subject: string,
  bars: ReturnType<typeof progressReporter>,
): Promise<Concept> {
  conceptTokenId(sd, inputs.options.token, subject);
  const { images, size } = await loadReferences(sd, inputs.photos);
  return learnConcept(sd, {
    references: images,
    size,
    subject,
    options: inputs.options,
    onProgress: bars.onProgress,
  });
}

interface Flags extends ConceptFlags {
  subject: string;
  out: string;
  model?: string;
  device?: DeviceFlag;
  dtype?: DtypeFlag;
  trainDtype?: TrainDtypeFlag;
}

export function conceptCommand(): Command {
  return addConceptOptions(
    new Command("concept")
      .description(
        "learn a new subject from reference photos and write it as a concept file for `edit swap --concept`",
      )
      .requiredOption("--subject <word>", 'the class of the new subject, e.g. "dog"')
      .requiredOption("--out <file>", "where to write the concept (safetensors)"),
  )
    .option(
      "--model <pathOrId>",
      "diffusers folder, hub id or single-file .safetensors/.ckpt (default: MODEL)",
    )
    .addOption(deviceOption())
    .addOption(dtypeOption())
    .addOption(trainDtypeOption())
    .action(async (f: Flags) => {
      const started = performance.now();
      const inputs = await conceptInputs(f);
      const { sd, fixture } = await openModel(f);
      const bars = progressReporter(["encode"]);
      try {
        const concept = await learnFromFlags(sd, inputs, f.subject, bars);
        bars.stop();
        const bytes = serializeConcept(concept);
        mkdirSync(path.dirname(path.resolve(f.out)), { recursive: true });
        writeFileSync(f.out, bytes);
        const first = concept.losses[0];
        const last = concept.losses.at(-1);
        process.stdout.write(
          `wrote the concept "${concept.token} ${concept.subject}" (${concept.references} reference photo(s), ${concept.losses.length} steps, ` +
            `loss ${first?.toFixed(4) ?? "-"} → ${last?.toFixed(4) ?? "-"}, ${(bytes.length / 1024 ** 2).toFixed(1)} MiB) to ${f.out} ` +
            `in ${formatSeconds((performance.now() - started) / 1000)}${fixture ? " — on the tiny TEST checkpoint" : ""}\n`,
        );
      } finally {
        bars.stop();
        await sd.release();
      }
    });
}
