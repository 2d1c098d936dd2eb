/**
 * A single-file Stable Diffusion 1.x/2.x checkpoint (`v1-5-pruned-emaonly.safetensors`, community
 * fine-tunes) opened as a Checkpoint, as diffusers' `StableDiffusionPipeline.from_single_file`: the weights
 * from the file under diffusers' names (ldm-names.ts), the configs either from a diffusers folder
 * (`configDir`, MODEL_CONFIG: diffusers' `config=`) with its tokenizer, or inferred from the file's tensor
 * shapes (ldm-config.ts) with the CLIP vocabulary shipped in assets/. Only the header (a `.ckpt`'s pickle,
 * read without running it) is read here.
 */
import { existsSync } from "node:fs";
import { extname } from "node:path";
import { CLIP_TOKENIZER_DIR } from "../../assets.js";
import type { Checkpoint, CheckpointConfigs, Component } from "./checkpoint.js";
import { checkComponents, openWeightFile, readConfigs } from "./checkpoint.js";
import { ModelFileError } from "./errors.js";
import { inferLdmConfigs } from "./ldm-config.js";
import { ldmToDiffusers } from "./ldm-names.js";
import { type TensorEntry, tensorFile } from "./tensor-file.js";
import { ClipTokenizer } from "./tokenizer.js";
import { weightStore } from "./weights.js";

/** File names a single-file checkpoint may have: safetensors, or a torch.save file (`.ckpt`). */
const TORCH_FILES = new Set([".ckpt", ".pt", ".pth", ".bin"]);

/** Whether MODEL names one checkpoint file rather than a diffusers folder or a hub id. */
export function isSingleFile(model: string): boolean {
  const ext = extname(model).toLowerCase();
  return ext === ".safetensors" || TORCH_FILES.has(ext);
}

export interface OpenSingleFileOptions {
  /** A diffusers folder whose configs and tokenizer to use (MODEL_CONFIG); unset: inferred from the file. */
  configDir?: string;
}

export function openSingleFile(file: string, options: OpenSingleFileOptions = {}): Checkpoint {
  if (!existsSync(file)) {
    throw new ModelFileError(
      file,
      "file not found (a single-file MODEL is read from this machine's disk; one on the hub is named by its URL, https://huggingface.co/owner/name/blob/main/file.safetensors, or as owner/name/file.safetensors)",
    );
  }
  // A .ckpt is read without running its pickle (torch-file.ts); its tensors are its `state_dict`'s.
  const st = openWeightFile(file);
  const configs = options.configDir ? readConfigs(options.configDir) : inferredConfigs(st.tensors, file);
  const parts = ldmToDiffusers(
    st.tensors.values(),
    {
      unetLayersPerBlock: configs.unet.layers_per_block,
      vaeLevels: configs.vae.block_out_channels.length,
      textLayers: configs.textEncoder.num_hidden_layers,
    },
    file,
  );
  const component = <C>(config: C, entries: TensorEntry[], what: string, anchor: string): Component<C> => {
    const weights = weightStore(tensorFile(file, entries, st.metadata));
    if (!weights.has(anchor)) throw new ModelFileError(file, `holds no ${what} (no tensor for ${anchor})`);
    return { dir: file, config, weights, weightsFile: file };
  };
  const checkpoint: Checkpoint = {
    dir: file,
    index: configs.index,
    unet: component(configs.unet, parts.unet, "UNet (model.diffusion_model.*)", "conv_in.weight"),
    vae: component(configs.vae, parts.vae, "VAE (first_stage_model.*)", "encoder.conv_in.weight"),
    textEncoder: component(
      configs.textEncoder,
      parts.textEncoder,
      "text encoder (cond_stage_model.*)",
      "embeddings.token_embedding.weight",
    ),
    tokenizer: configs.tokenizer,
    scheduler: configs.scheduler,
  };
  checkComponents(checkpoint, configs.files);
  return checkpoint;
}

function inferredConfigs(tensors: ReadonlyMap<string, TensorEntry>, file: string): CheckpointConfigs {
  const shapes = new Map([...tensors.values()].map((e) => [e.name, e.shape]));
  const inferred = inferLdmConfigs(shapes, file);
  const where = `${file} (configs inferred from its tensors)`;
  return {
    ...inferred,
    tokenizer: ClipTokenizer.fromFolder(
      CLIP_TOKENIZER_DIR,
      inferred.textEncoder.max_position_embeddings,
      inferred.padToken,
    ),
    files: { unet: where, vae: where, textEncoder: where },
  };
}
