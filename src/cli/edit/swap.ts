/**
 * `edit swap`: Photoswap on one photo from the command line — learn the new subject from reference photos
 * (or take a concept file), invert the photo, swap every seed × strength variant, and write the
 * reconstruction, each swap, the grid, the concept file and a JSON report (settings, timings, PSNR) into
 * --out. Every input is checked before the model is touched, and what needs the tokenizer before any
 * learning starts. `--also word=concept-file` swaps more subjects of the photo in the same swap, each for
 * its own learned concept.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { tileToPng } from "../../engine/grid.js";
import { loadPhoto, photoArgs, probeImage } from "../../engine/image.js";
import { checkConceptModel, conceptTokenId } from "../../engine/pipelines/concept.js";
import { deserializeConcept, serializeConcept } from "../../engine/pipelines/concept-file.js";
import { planSwap, type SwapStrengths } from "../../engine/pipelines/photoswap.js";
import { swapEdit, variantGrid, variantLabel } from "../../engine/pipelines/photoswap-edit.js";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import { parseNumberList } from "../../spec/imagic.js";
import { MAX_SEED } from "../../spec/request.js";
import { checkPhotoShape, type Size } from "../../spec/shape.js";
import {
  checkSubjectInPrompt,
  checkSubjectWord,
  checkVariantCount,
  DEFAULT_INVERSION,
  INVERSION_METHODS,
  type InversionMethodName,
  NULL_TEXT_INNER_STEPS,
  PAPER_STRENGTHS,
  SWAP_BATCH,
  SWAP_BLEND_THRESHOLD,
  SWAP_GUIDANCE,
  SWAP_LIMITS,
  SWAP_SAMPLING_STEPS,
  SWAP_VARIATION,
  sourcePromptFor,
} from "../../spec/swap.js";
import {
  type DeviceFlag,
  type DtypeFlag,
  deviceOption,
  dtypeOption,
  sizeOption,
  type TrainDtypeFlag,
  trainDtypeOption,
} from "../options.js";
import { addConceptOptions, type ConceptFlags, conceptInputs, learnFromFlags } from "./concept.js";
import { collect, num, openModel, progressReporter, readInput } from "./shared.js";

interface Flags extends ConceptFlags {
  source: string;
  subject: string;
  refSubject?: string;
  sourcePrompt?: string;
  concept?: string;
  also: string[];
  inversion: InversionMethodName;
  nullTextInner?: string;
  lambdaPhi?: string;
  lambdaM?: string;
  lambdaA?: string;
  seeds: string;
  steps?: string;
  guidance?: string;
  variation?: string;
  blendThreshold?: string;
  blend: boolean;
  batch?: string;
  size?: Size;
  out: string;
  model?: string;
  device?: DeviceFlag;
  dtype?: DtypeFlag;
  trainDtype?: TrainDtypeFlag;
}

/** Whole numbers from `lo` to `hi`, from a comma list (or the default). */
function wholeList(flag: string, text: string | undefined, dflt: number, lo: number, hi: number): number[] {
  const list = text === undefined ? [dflt] : parseNumberList(text, flag);
  const bad = list.find((v) => !Number.isInteger(v) || v < lo || v > hi);
  if (bad !== undefined)
    throw new UserFacingError(`${flag} takes whole numbers from ${lo} to ${hi} (got ${bad})`);
  return list;
}

/**
 * `--also word=file`: another subject of the photo (a word of the source prompt) and the concept file
 * swapped in for it; each word once, the main --subject included.
 */
function otherSubjects(f: Flags, sourcePrompt: string) {
  const others = f.also.map((spec) => {
    const eq = spec.indexOf("=");
    if (eq < 1 || eq === spec.length - 1)
      throw new UserFacingError(
        `--also takes word=concept-file, e.g. "sofa=chair.safetensors" (got "${spec}")`,
      );
    const word = spec.slice(0, eq);
    const file = spec.slice(eq + 1);
    checkSubjectInPrompt(word, sourcePrompt);
    return { word, file, concept: deserializeConcept(readInput(file, "--also")) };
  });
  const words = [f.subject, ...others.map((o) => o.word)];
  const twice = words.find((w, i) => words.indexOf(w) !== i);
  if (twice !== undefined)
    throw new UserFacingError(
      `the subject "${twice}" is named twice: each subject of the photo takes one concept`,
    );
  return others;
}

/** Every λφ × λM × λA combination of the three lists. */
function strengthGrid(f: Flags, steps: number): SwapStrengths[] {
  const phi = wholeList(
    "--lambda-phi",
    f.lambdaPhi,
    Math.min(PAPER_STRENGTHS.selfOutputSteps, steps),
    0,
    steps,
  );
  const m = wholeList("--lambda-m", f.lambdaM, Math.min(PAPER_STRENGTHS.selfMapSteps, steps), 0, steps);
  const a = wholeList("--lambda-a", f.lambdaA, Math.min(PAPER_STRENGTHS.crossMapSteps, steps), 0, steps);
  return phi.flatMap((p) =>
    m.flatMap((mm) => a.map((aa) => ({ selfOutputSteps: p, selfMapSteps: mm, crossMapSteps: aa }))),
  );
}

export function swapCommand(): Command {
  return addConceptOptions(
    new Command("swap")
      .description(
        "swap the subject of a photo for one learned from reference photos (Photoswap): writes the reconstruction, the swaps, the grid, the concept and report.json",
      )
      .requiredOption("--source <file>", "the photo whose subject is replaced")
      .requiredOption(
        "--subject <word>",
        'the subject in the photo, as a word of the source prompt, e.g. "cat"',
      )
      .option("--ref-subject <word>", "the class of the new subject the references show (default: --subject)")
      .option(
        "--source-prompt <text>",
        'what the photo shows, naming the subject (default "a photo of a <subject>")',
      )
      .option("--concept <file>", "a concept file (edit concept, or an earlier swap's) instead of --ref")
      .option(
        "--also <word=file>",
        'another subject of the photo and the concept file swapped in for it, e.g. "sofa=chair.safetensors" (repeat; each a word of the source prompt)',
        collect,
        [],
      ),
  )
    .addOption(
      new Option(
        "--inversion <method>",
        "how the photo is inverted (direct: exact and cheap; null-text: the official method)",
      )
        .choices(INVERSION_METHODS)
        .default(DEFAULT_INVERSION),
    )
    .option(
      "--null-text-inner <n>",
      `null-text Adam steps per sampling step (default ${NULL_TEXT_INNER_STEPS})`,
    )
    .option(
      "--lambda-phi <list>",
      `steps that keep the source's self-attention output φ (default ${PAPER_STRENGTHS.selfOutputSteps}); a list makes variants`,
    )
    .option(
      "--lambda-m <list>",
      `steps that keep the source's self-attention map M (default ${PAPER_STRENGTHS.selfMapSteps})`,
    )
    .option(
      "--lambda-a <list>",
      `steps that keep the source's cross-attention map A (default ${PAPER_STRENGTHS.crossMapSteps})`,
    )
    .option("--seeds <list>", "variant seeds (0: the inverted noise itself)", "0,1,2,3")
    .option("--steps <n>", `DDIM steps (default ${SWAP_SAMPLING_STEPS})`)
    .option("--guidance <scale>", `classifier-free guidance (default ${SWAP_GUIDANCE})`)
    .option("--variation <f>", `how far seeds other than 0 move the start, 0–1 (default ${SWAP_VARIATION})`)
    .option("--blend-threshold <f>", `the local blend's threshold, 0–1 (default ${SWAP_BLEND_THRESHOLD})`)
    .option("--no-blend", "no local blend (the official code always blends)")
    .option("--batch <n>", `variants per UNet call (default ${SWAP_BATCH})`)
    .addOption(sizeOption("the source photo"))
    .option("--out <dir>", "output folder", "swap-out")
    .option(
      "--model <pathOrId>",
      "diffusers folder, hub id or single-file .safetensors/.ckpt (default: MODEL)",
    )
    .addOption(deviceOption())
    .addOption(dtypeOption())
    .addOption(trainDtypeOption("concept learning and null-text"))
    .action(async (f: Flags) => {
      const started = performance.now();
      // 1. Everything that can be checked without the model.
      const steps = num("--steps", f.steps) ?? SWAP_SAMPLING_STEPS;
      if (!Number.isInteger(steps) || steps < 1 || steps > SWAP_LIMITS.samplingSteps)
        throw new UserFacingError(`--steps must be a whole number from 1 to ${SWAP_LIMITS.samplingSteps}`);
      const guidance = num("--guidance", f.guidance) ?? SWAP_GUIDANCE;
      if (!(guidance >= 1 && guidance <= 30)) throw new UserFacingError("--guidance must be from 1 to 30");
      const variation = num("--variation", f.variation) ?? SWAP_VARIATION;
      if (!(variation >= 0 && variation <= 1)) throw new UserFacingError("--variation must be from 0 to 1");
      const threshold = num("--blend-threshold", f.blendThreshold) ?? SWAP_BLEND_THRESHOLD;
      if (!(threshold >= 0 && threshold < 1))
        throw new UserFacingError("--blend-threshold must be from 0 to below 1");
      const inner = num("--null-text-inner", f.nullTextInner) ?? NULL_TEXT_INNER_STEPS;
      if (!Number.isInteger(inner) || inner < 1 || inner > 100)
        throw new UserFacingError("--null-text-inner must be a whole number from 1 to 100");
      const batch = num("--batch", f.batch) ?? SWAP_BATCH;
      if (!Number.isInteger(batch) || batch < 1 || batch > 16)
        throw new UserFacingError("--batch must be a whole number from 1 to 16");
      const seeds = wholeList("--seeds", f.seeds, 0, 0, MAX_SEED);
      const strengths = strengthGrid(f, steps);
      checkVariantCount(seeds.length, strengths.length, "--seeds × --lambda-phi/-m/-a");
      // Without --source-prompt the photo is "a photo of a <subject>": one word, said as chat says it.
      if (f.sourcePrompt === undefined) checkSubjectWord(f.subject, "--subject");
      const sourcePrompt = f.sourcePrompt ?? sourcePromptFor(f.subject);
      checkSubjectInPrompt(f.subject, sourcePrompt);
      const others = otherSubjects(f, sourcePrompt);
      const photoBytes = readInput(f.source, "--source");
      const probe = await probeImage(photoBytes).catch((e: Error) => {
        throw new UserFacingError(`--source ${f.source}: ${e.message}`);
      });
      checkPhotoShape(probe, `--source ${f.source}`);
      if (f.concept && f.ref.length > 0)
        throw new UserFacingError(
          "--concept is a learned subject: leave out --ref (or leave out --concept to learn one)",
        );
      const saved = f.concept ? deserializeConcept(readInput(f.concept, "--concept")) : undefined;
      const learn = saved ? undefined : await conceptInputs(f);
      const refSubject = saved?.subject ?? f.refSubject ?? f.subject;

      // 2. The model, then what needs its tokenizer — all before anything is learned or written.
      // MODEL, not the concept's model: a concept of another model is refused, not silently followed.
      const { sd, model, fixture } = await openModel(f);
      const bars = progressReporter(["encode", "decode"]);
      try {
        if (saved) checkConceptModel(sd, saved);
        for (const o of others) checkConceptModel(sd, o.concept);
        const token = saved?.token ?? (learn?.options.token as string);
        const tokenId = saved?.tokenId ?? conceptTokenId(sd, token, refSubject);
        const tokens = [token, ...others.map((o) => o.concept.token)];
        const shared = others.find((o, i) => tokens.indexOf(o.concept.token) !== i + 1);
        if (shared)
          throw new UserFacingError(
            `--also ${shared.word}=${shared.file}: its concept's token "${shared.concept.token}" is another subject's too; learn one of them with another --token`,
          );
        const plan = planSwap(sd.tokenizer, sourcePrompt, [
          { word: f.subject, concept: { token, tokenId, subject: refSubject } },
          ...others.map((o) => ({ word: o.word, concept: o.concept })),
        ]);
        mkdirSync(f.out, { recursive: true });
        const loadSeconds = (performance.now() - started) / 1000;
        const c0 = performance.now();
        const concept =
          saved ?? (await learnFromFlags(sd, learn as NonNullable<typeof learn>, refSubject, bars));
        const conceptSeconds = saved ? 0 : (performance.now() - c0) / 1000;
        const files: string[] = [];
        const write = (name: string, bytes: Uint8Array) => {
          writeFileSync(path.join(f.out, name), bytes);
          files.push(name);
        };
        if (!saved) write("concept.safetensors", serializeConcept(concept));
        const loaded = await loadPhoto(photoBytes, sd.imageShape, { requested: f.size });
        const result = await swapEdit(sd, {
          ...photoArgs(loaded),
          subject: f.subject,
          sourcePrompt,
          concept,
          others: others.map((o) => ({ word: o.word, concept: o.concept })),
          inversion: f.inversion,
          nullTextInnerSteps: inner,
          steps,
          guidance,
          seeds,
          strengths,
          variation,
          blendThreshold: f.blend ? threshold : null,
          batch,
          onProgress: bars.onProgress,
        });
        bars.stop();
        write("reconstruction.png", await tileToPng(result.reconstruction));
        const variants = [];
        for (const [i, v] of result.variants.entries()) {
          const s = v.strengths;
          const name = `swap-${i + 1}-seed-${v.seed}-phi${s.selfOutputSteps}-m${s.selfMapSteps}-a${s.crossMapSteps}.png`;
          write(name, await tileToPng(v));
          variants.push({ file: name, label: variantLabel(v), seed: v.seed, strengths: s });
        }
        write("grid.png", await variantGrid(result.variants));
        const report = {
          model,
          device: sd.device,
          source: { file: f.source, width: probe.width, height: probe.height, working: loaded.shape },
          subject: f.subject,
          sourcePrompt: result.sourcePrompt,
          targetPrompt: plan.targetPrompt,
          concept: {
            file: f.concept ?? "concept.safetensors",
            learned: !saved,
            token: concept.token,
            subject: concept.subject,
            references: concept.references,
            options: concept.options,
            losses: concept.losses,
            seconds: concept.seconds,
          },
          others: others.map((o) => ({
            word: o.word,
            file: o.file,
            token: o.concept.token,
            subject: o.concept.subject,
          })),
          inversion: { method: f.inversion, ...(f.inversion === "null-text" ? { innerSteps: inner } : {}) },
          sampling: { steps, guidance, variation, blendThreshold: f.blend ? threshold : null, batch },
          variants,
          // Direct inversion reconstructs exactly: an infinite PSNR, which JSON cannot hold.
          psnr: {
            reconstruction: Number.isFinite(result.reconstructionPsnr) ? result.reconstructionPsnr : "exact",
          },
          seconds: {
            load: loadSeconds,
            concept: conceptSeconds,
            ...result.seconds,
            total: (performance.now() - started) / 1000,
          },
          files,
        };
        write("report.json", new TextEncoder().encode(`${JSON.stringify(report, null, 2)}\n`));
        process.stdout.write(
          `wrote the reconstruction (PSNR ${Number.isFinite(result.reconstructionPsnr) ? `${result.reconstructionPsnr.toFixed(1)} dB` : "∞: exact"}), ${variants.length} swap(s), grid.png${saved ? "" : ", concept.safetensors"} and report.json to ${f.out} ` +
            `in ${formatSeconds(report.seconds.total)}${fixture ? " — on the tiny TEST checkpoint: expect noise, not a swap" : ""}\n`,
        );
      } finally {
        bars.stop();
        await sd.release();
      }
    });
}
