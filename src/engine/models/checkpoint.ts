/**
 * A diffusers-format Stable Diffusion folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
 * scheduler/. Opening one validates every config and reads the weight files' headers (not their data).
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  loadConfig,
  type ModelIndex,
  ModelIndexSchema,
  parseConfig,
  readJsonObject,
  type SchedulerConfig,
  SchedulerConfigSchema,
  SD_PIPELINES,
  type TextEncoderConfig,
  TextEncoderConfigSchema,
  type UNetConfig,
  UNetConfigSchema,
  type VaeConfig,
  VaeConfigSchema,
} from "./config.js";
import { ModelFileError } from "./errors.js";
import { openSafetensors } from "./safetensors.js";
import type { TensorFile } from "./tensor-file.js";
import { ClipTokenizer } from "./tokenizer.js";
import { openTorchFile } from "./torch-file.js";
import { type WeightStore, weightStore, withoutPrefix } from "./weights.js";

export interface Component<C> {
  readonly dir: string;
  readonly config: C;
  readonly weights: WeightStore;
  /** The weight file (or sharded index) that was opened. */
  readonly weightsFile: string;
}

export interface Checkpoint {
  readonly dir: string;
  readonly index: ModelIndex;
  readonly unet: Component<UNetConfig>;
  readonly vae: Component<VaeConfig>;
  /** Parameter names without transformers' optional `text_model.` prefix: `encoder.layers.0.mlp.fc1.weight`. */
  readonly textEncoder: Component<TextEncoderConfig>;
  readonly tokenizer: ClipTokenizer;
  readonly scheduler: { readonly className: string; readonly config: SchedulerConfig };
}

export interface OpenCheckpointOptions {
  /** Prefer `*.<variant>.safetensors` (or `.bin`) files (diffusers' `variant="fp16"`), falling back to the plain ones. */
  variant?: string;
}

export function openCheckpoint(dir: string, options: OpenCheckpointOptions = {}): Checkpoint {
  if (!existsSync(dir)) throw new ModelFileError(dir, "checkpoint folder not found");
  const configs = readConfigs(dir);
  const open = <C>(name: string, config: C, base: string, stripPrefix = ""): Component<C> => {
    const componentDir = join(dir, name);
    const weightsFile = findWeightsFile(componentDir, base, options.variant);
    const store = weightStore(openWeightFile(weightsFile));
    return {
      dir: componentDir,
      config,
      weights: stripPrefix ? withoutPrefix(store, stripPrefix) : store,
      weightsFile,
    };
  };
  const checkpoint: Checkpoint = {
    dir,
    index: configs.index,
    unet: open("unet", configs.unet, "diffusion_pytorch_model"),
    vae: open("vae", configs.vae, "diffusion_pytorch_model"),
    textEncoder: open("text_encoder", configs.textEncoder, "model", "text_model."),
    tokenizer: configs.tokenizer,
    scheduler: configs.scheduler,
  };
  checkComponents(checkpoint, configs.files);
  return checkpoint;
}

/** A checkpoint's configs and tokenizer, and the config files they came from (for messages). */
export interface CheckpointConfigs {
  readonly index: ModelIndex;
  readonly unet: UNetConfig;
  readonly vae: VaeConfig;
  readonly textEncoder: TextEncoderConfig;
  readonly tokenizer: ClipTokenizer;
  readonly scheduler: Checkpoint["scheduler"];
  readonly files: { readonly unet: string; readonly vae: string; readonly textEncoder: string };
}

/** The prompt length, in tokens, of every SD 1.x/2.x text encoder: contexts are [B, 77, D]. */
const CONTEXT_TOKENS = 77;

/**
 * Every config of a diffusers folder, validated, and its tokenizer. A single-file checkpoint takes these
 * from a diffusers folder too (MODEL_CONFIG, diffusers' `from_single_file(…, config=)`).
 */
export function readConfigs(dir: string): CheckpointConfigs {
  const index = loadConfig(ModelIndexSchema, join(dir, "model_index.json"), SD_PIPELINES);
  const files = {
    unet: join(dir, "unet", "config.json"),
    vae: join(dir, "vae", "config.json"),
    textEncoder: join(dir, "text_encoder", "config.json"),
  };
  const textEncoder = loadConfig(TextEncoderConfigSchema, files.textEncoder);
  const tokenizerDir = join(dir, "tokenizer");
  if (!existsSync(tokenizerDir)) throw new ModelFileError(tokenizerDir, "tokenizer folder not found");
  const tokenizer = ClipTokenizer.fromFolder(tokenizerDir, textEncoder.max_position_embeddings);
  // diffusers pads every prompt to the tokenizer's model_max_length (which the text encoder's positions
  // bound); the engine's graphs and pipelines condition on the 77 tokens of every SD 1.x/2.x checkpoint, so
  // another length would silently compute another function.
  if (tokenizer.maxLength !== CONTEXT_TOKENS) {
    throw new ModelFileError(
      join(tokenizerDir, "tokenizer_config.json"),
      `prompts are ${tokenizer.maxLength} tokens long here (model_max_length, at most the text encoder's max_position_embeddings ${textEncoder.max_position_embeddings}); the engine supports the ${CONTEXT_TOKENS} tokens of Stable Diffusion 1.x and 2.x only`,
    );
  }
  const rawUnet = readJsonObject(files.unet);
  const unet = parseConfig(UNetConfigSchema, rawUnet, files.unet, ["UNet2DConditionModel"]);
  const scheduler = loadConfig(SchedulerConfigSchema, join(dir, "scheduler", "scheduler_config.json"));
  return {
    index,
    unet: { ...unet, sample_size: pipelineSampleSize(unet.sample_size, rawUnet._diffusers_version) },
    vae: loadConfig(VaeConfigSchema, files.vae, ["AutoencoderKL"]),
    textEncoder,
    tokenizer,
    scheduler: {
      className: index.scheduler[1],
      // StableDiffusionPipeline.__init__ rewrites outdated scheduler configs before any sampling: a
      // steps_offset other than 1 becomes 1 and clip_sample true becomes false (SD 1.x-era configs omit
      // both, and DDIM's defaults are 0 and true), so every SD pipeline samples with these two values.
      config: { ...scheduler, steps_offset: 1, clip_sample: false },
    },
    files,
  };
}

/**
 * StableDiffusionPipeline.__init__ also rewrites a UNet config written by diffusers < 0.9.0 whose
 * sample_size is under 64 (SD 1.1–1.4 fine-tunes said 32) to 64, the size those models were trained at;
 * `version` is the config's `_diffusers_version`.
 */
function pipelineSampleSize(
  sampleSize: UNetConfig["sample_size"],
  version: unknown,
): UNetConfig["sample_size"] {
  if (typeof sampleSize !== "number" || sampleSize >= 64) return sampleSize;
  const m = /^(\d+)\.(\d+)/.exec(typeof version === "string" ? version : "");
  if (!m) return sampleSize;
  return Number(m[1]) === 0 && Number(m[2]) < 9 ? 64 : sampleSize;
}

/** The components must fit together: the UNet attends to the text encoder's states and denoises the VAE's latents. */
export function checkComponents(
  ckpt: Pick<Checkpoint, "unet" | "vae" | "textEncoder">,
  files: CheckpointConfigs["files"],
): void {
  const { unet, vae, textEncoder } = ckpt;
  if (unet.config.cross_attention_dim !== textEncoder.config.hidden_size) {
    throw new ModelFileError(
      files.unet,
      `cross_attention_dim ${unet.config.cross_attention_dim} does not match the text encoder's hidden_size ${textEncoder.config.hidden_size} (${files.textEncoder})`,
    );
  }
  if (unet.config.in_channels !== vae.config.latent_channels) {
    throw new ModelFileError(
      files.unet,
      `in_channels ${unet.config.in_channels} does not match the VAE's latent_channels ${vae.config.latent_channels}`,
    );
  }
}

/**
 * A weight file or sharded index by its name: safetensors, or a torch.save file (`.bin`) whose pickle is
 * parsed, never executed (torch-file.ts).
 */
export function openWeightFile(file: string): TensorFile {
  return /\.safetensors(\.index(\.[A-Za-z0-9_]+)?\.json)?$/.test(file)
    ? openSafetensors(file)
    : openTorchFile(file);
}

/**
 * Stands for a checkpoint's weights in graph cache keys (the runtime's cache hashes a graph's structure, not
 * its weight bytes): the path, size and modification time of every file its tensors are read from — each
 * shard of a sharded checkpoint, not only the index that names them, so a re-downloaded shard misses the
 * cache as a changed single file does.
 */
export function checkpointFingerprint(ckpt: Checkpoint): string {
  const files = new Set<string>();
  for (const c of [ckpt.unet, ckpt.vae, ckpt.textEncoder]) {
    files.add(c.weightsFile);
    for (const name of c.weights.names()) files.add(c.weights.info(name).file);
  }
  const stats = [...files].map((f) => {
    const st = statSync(f);
    return [resolve(f), st.size, st.mtimeMs];
  });
  return createHash("sha256").update(JSON.stringify(stats)).digest("hex").slice(0, 16);
}

/**
 * The weight file of a component, by diffusers' naming and order: `<base>[.<variant>].safetensors` or a
 * sharded `<base>.safetensors.index[.<variant>].json`, else the PyTorch pickles diffusers and
 * transformers also load (`diffusion_pytorch_model[.<variant>].bin`, `pytorch_model.bin`, sharded
 * `*.bin.index[.<variant>].json`). Other pickles (.ckpt, .pt, .pth) in a component folder are not
 * diffusers weights and are named in the refusal.
 */
export function findWeightsFile(componentDir: string, base: string, variant?: string): string {
  if (!existsSync(componentDir)) throw new ModelFileError(componentDir, "component folder not found");
  const files = new Set(readdirSync(componentDir));
  const found = weightCandidates(base, variant, files).find((name) => files.has(name));
  if (found) return join(componentDir, found);
  const others = [...files].filter((f) => /\.(bin|ckpt|pt|pth)$/.test(f));
  if (others.length > 0) {
    throw new ModelFileError(
      componentDir,
      `holds no weight file diffusers loads for this component (found ${others.join(", ")}; looked for ${weightCandidates(base, variant, []).join(", ")})`,
    );
  }
  throw new ModelFileError(
    componentDir,
    `no weight file found (looked for ${weightCandidates(base, variant, []).join(", ")})`,
  );
}

/** transformers names its safetensors `model.safetensors` but its pickles `pytorch_model.bin`. */
const PICKLE_BASE: Readonly<Record<string, string>> = { model: "pytorch_model" };

/**
 * A component's weight file names in the order they are preferred: safetensors first — the variant's
 * (single or sharded index), the plain ones, any other variant among `present` (a folder or repository
 * holding only fp16 weights is still usable) — then the PyTorch pickles in the same order, so a pickle
 * is opened (and downloaded) only where a component has no safetensors at all. The hub download and
 * openCheckpoint choose by the same order, so the engine opens the files that were downloaded.
 */
export function weightCandidates(
  base: string,
  variant: string | undefined,
  present: Iterable<string>,
): string[] {
  const names = [...present];
  const inOrder = (stem: string, ext: "safetensors" | "bin") => {
    const variants = variant ? [`${stem}.${variant}.${ext}`, `${stem}.${ext}.index.${variant}.json`] : [];
    const plain = [`${stem}.${ext}`, `${stem}.${ext}.index.json`];
    const pattern = new RegExp(`^[^.]+\\.[A-Za-z0-9_]+\\.${ext}$`);
    const anyVariant = names.filter((f) => f.startsWith(`${stem}.`) && pattern.test(f)).sort();
    // A variant's sharded index (`<stem>.<ext>.index.<variant>.json`), after the single files.
    const indexPattern = new RegExp(`^[^.]+\\.${ext}\\.index\\.[A-Za-z0-9_]+\\.json$`);
    const anyShardedVariant = names.filter((f) => f.startsWith(`${stem}.`) && indexPattern.test(f)).sort();
    return [...variants, ...plain, ...anyVariant, ...anyShardedVariant];
  };
  return [...new Set([...inOrder(base, "safetensors"), ...inOrder(PICKLE_BASE[base] ?? base, "bin")])];
}
