/**
 * A single-file Stable Diffusion 1.x/2.x checkpoint in the original (CompVis / Stability "ldm") layout,
 * seen under diffusers' parameter names — what diffusers' `from_single_file` does in
 * loaders/single_file_utils.py (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), done as a map over the file's tensor entries:
 * no tensor data is read. The VAE's 1×1-convolution attention weights become linear weights by their shape
 * alone (the same bytes), and OpenCLIP's fused q/k/v projection becomes three contiguous byte ranges, so a
 * 2–4 GB file streams tensor by tensor as a diffusers folder does.
 *
 * Names outside the three models (EMA copies `model_ema.*`, the training schedule's buffers) and a baked-in
 * VAE's training state are left out, as diffusers leaves them; a name inside one that no SD 1.x/2.x
 * network has is refused by name, since dropping it would compute another function.
 */
import { ModelFileError } from "./errors.js";
import type { TensorEntry } from "./tensor-file.js";

export const LDM_PREFIX = {
  unet: "model.diffusion_model.",
  vae: "first_stage_model.",
  /** SD 1.x: transformers' CLIPTextModel, under its own names. */
  clip: "cond_stage_model.transformer.",
  /** SD 2.x: OpenCLIP's text tower. */
  openClip: "cond_stage_model.model.",
} as const;

export interface LdmLayout {
  /** The UNet's layers_per_block: the ldm file numbers its blocks straight through the levels. */
  readonly unetLayersPerBlock: number;
  /** The VAE's levels: the ldm decoder numbers its up blocks from the bottom, diffusers from the top. */
  readonly vaeLevels: number;
  /**
   * Text encoder layers kept. SD 2.x conditions on OpenCLIP's penultimate layer: an original file holds
   * 24, diffusers' config has num_hidden_layers 23 and leaves the last one out (a file converted from a
   * diffusers folder holds just those 23).
   */
  readonly textLayers: number;
}

export interface LdmComponents {
  readonly unet: TensorEntry[];
  readonly vae: TensorEntry[];
  /** Without transformers' `text_model.` prefix, as the engine's text encoder reads them. */
  readonly textEncoder: TensorEntry[];
}

/** Renamed entries of one ldm tensor, or undefined where the name is none the network has. */
type Rename = (rest: string, e: TensorEntry) => TensorEntry[] | undefined;

const renamed = (e: TensorEntry, name: string, shape = e.shape): TensorEntry[] => [{ ...e, name, shape }];

const UNET_FIXED: Readonly<Record<string, string>> = {
  "time_embed.0": "time_embedding.linear_1",
  "time_embed.2": "time_embedding.linear_2",
  "input_blocks.0.0": "conv_in",
  "out.0": "conv_norm_out",
  "out.2": "conv_out",
};
const UNET_RESNET: Readonly<Record<string, string>> = {
  "in_layers.0": "norm1",
  "in_layers.2": "conv1",
  "out_layers.0": "norm2",
  "out_layers.3": "conv2",
  "emb_layers.1": "time_emb_proj",
  skip_connection: "conv_shortcut",
};

function resnetParam(rest: string, table: Readonly<Record<string, string>>): string | undefined {
  const m = /^(.+)\.(weight|bias)$/.exec(rest);
  const layer = m && table[m[1] as string];
  return layer ? `${layer}.${m[2]}` : undefined;
}

/**
 * input_blocks.0 is conv_in; then each level has layers_per_block (resnet, attention) blocks and, below
 * the last level, a downsampler block; output_blocks hold layers_per_block + 1 blocks per level, the last
 * one's upsampler after its resnet (index 1) or its attention (index 2); middle_block is resnet,
 * attention, resnet. Attention (SpatialTransformer) parameters already have diffusers' names.
 */
function unetRename(layersPerBlock: number): Rename {
  const per = layersPerBlock + 1;
  return (rest, e) => {
    const fixed = /^(.+)\.(weight|bias)$/.exec(rest);
    const f = fixed && UNET_FIXED[fixed[1] as string];
    if (f) return renamed(e, `${f}.${fixed[2]}`);
    const mid = /^middle_block\.(\d+)\.(.+)$/.exec(rest);
    if (mid) {
      const [, i, tail] = mid as unknown as [string, string, string];
      if (i === "1") return renamed(e, `mid_block.attentions.0.${tail}`);
      const p = resnetParam(tail, UNET_RESNET);
      return p && (i === "0" || i === "2")
        ? renamed(e, `mid_block.resnets.${Number(i) / 2}.${p}`)
        : undefined;
    }
    const m = /^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$/.exec(rest);
    if (!m) return undefined;
    const [, part, a, b, tail] = m as unknown as [string, string, string, string, string];
    const i = Number(a);
    const sub = Number(b);
    if (part === "input_blocks") {
      if (i === 0) return undefined;
      const level = Math.floor((i - 1) / per);
      const layer = (i - 1) % per;
      if (sub === 0 && tail.startsWith("op.")) {
        const p = /^op\.(weight|bias)$/.exec(tail);
        return p ? renamed(e, `down_blocks.${level}.downsamplers.0.conv.${p[1]}`) : undefined;
      }
      if (sub === 0) {
        const p = resnetParam(tail, UNET_RESNET);
        return p ? renamed(e, `down_blocks.${level}.resnets.${layer}.${p}`) : undefined;
      }
      return sub === 1 ? renamed(e, `down_blocks.${level}.attentions.${layer}.${tail}`) : undefined;
    }
    const level = Math.floor(i / per);
    const layer = i % per;
    const up = /^conv\.(weight|bias)$/.exec(tail);
    if (up && sub >= 1) return renamed(e, `up_blocks.${level}.upsamplers.0.conv.${up[1]}`);
    if (sub === 0) {
      const p = resnetParam(tail, UNET_RESNET);
      return p ? renamed(e, `up_blocks.${level}.resnets.${layer}.${p}`) : undefined;
    }
    return sub === 1 ? renamed(e, `up_blocks.${level}.attentions.${layer}.${tail}`) : undefined;
  };
}

const VAE_FIXED: Readonly<Record<string, string>> = {
  "encoder.conv_in": "encoder.conv_in",
  "encoder.conv_out": "encoder.conv_out",
  "encoder.norm_out": "encoder.conv_norm_out",
  "decoder.conv_in": "decoder.conv_in",
  "decoder.conv_out": "decoder.conv_out",
  "decoder.norm_out": "decoder.conv_norm_out",
  quant_conv: "quant_conv",
  post_quant_conv: "post_quant_conv",
};
const VAE_RESNET: Readonly<Record<string, string>> = {
  norm1: "norm1",
  conv1: "conv1",
  norm2: "norm2",
  conv2: "conv2",
  nin_shortcut: "conv_shortcut",
};
const VAE_ATTENTION: Readonly<Record<string, string>> = {
  norm: "group_norm",
  q: "to_q",
  k: "to_k",
  v: "to_v",
  proj_out: "to_out.0",
};

/**
 * VAE files (vae-ft-mse-840000-ema-pruned.ckpt) also hold their training loss (`loss.*`: discriminator,
 * LPIPS, logvar) and EMA bookkeeping (`model_ema.decay`, `num_updates`), which webui's VAE loader filters
 * out; a VAE baked into a checkpoint by copying every key brings them under `first_stage_model.`. They
 * are no part of the autoencoder, and diffusers' conversion takes only the encoder's and decoder's names.
 */
const VAE_TRAINING_STATE = /^(loss|model_ema)\./;

function vaeRename(levels: number): Rename {
  return (rest, e) => {
    if (VAE_TRAINING_STATE.test(rest)) return [];
    const fixed = /^(.+)\.(weight|bias)$/.exec(rest);
    const f = fixed && VAE_FIXED[fixed[1] as string];
    if (f) return renamed(e, `${f}.${fixed[2]}`);
    let m = /^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$/.exec(rest);
    if (m) {
      const p = resnetParam(m[3] as string, VAE_RESNET);
      return p ? renamed(e, `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${p}`) : undefined;
    }
    m = /^encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$/.exec(rest);
    if (m) return renamed(e, `encoder.down_blocks.${m[1]}.downsamplers.0.conv.${m[2]}`);
    m = /^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$/.exec(rest);
    if (m) {
      const p = resnetParam(m[3] as string, VAE_RESNET);
      const level = levels - 1 - Number(m[1]);
      return p && level >= 0 ? renamed(e, `decoder.up_blocks.${level}.resnets.${m[2]}.${p}`) : undefined;
    }
    m = /^decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$/.exec(rest);
    if (m) {
      const level = levels - 1 - Number(m[1]);
      return level >= 0 ? renamed(e, `decoder.up_blocks.${level}.upsamplers.0.conv.${m[2]}`) : undefined;
    }
    m = /^(encoder|decoder)\.mid\.block_([12])\.(.+)$/.exec(rest);
    if (m) {
      const p = resnetParam(m[3] as string, VAE_RESNET);
      return p ? renamed(e, `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${p}`) : undefined;
    }
    m = /^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$/.exec(rest);
    if (!m) return undefined;
    const name = `${m[1]}.mid_block.attentions.0.${VAE_ATTENTION[m[2] as string]}.${m[3]}`;
    // ldm computes q, k, v and the output projection as 1×1 convolutions ([C, C, 1, 1]); diffusers as
    // linear layers ([C, C]): the same bytes, read with the trailing unit dimensions dropped.
    if (m[2] !== "norm" && m[3] === "weight" && e.shape.length > 2) {
      if (e.shape.slice(2).some((d) => d !== 1)) return undefined;
      return renamed(e, name, e.shape.slice(0, 2));
    }
    return renamed(e, name);
  };
}

/** Whether encoder layer `name` (`encoder.layers.N.…`) is one the text encoder keeps. */
function keptLayer(name: string, layers: number): boolean {
  const m = /^encoder\.layers\.(\d+)\./.exec(name);
  return !m || Number(m[1]) < layers;
}

/** SD 1.x: transformers' names under `cond_stage_model.transformer.`; the position ids buffer is not a weight. */
function clipRename(layers: number): Rename {
  return (rest, e) => {
    const name = rest.startsWith("text_model.") ? rest.slice("text_model.".length) : rest;
    if (name === "embeddings.position_ids") return [];
    if (!/^(embeddings|encoder\.layers\.\d+|final_layer_norm)\./.test(name)) return undefined;
    return keptLayer(name, layers) ? renamed(e, name) : [];
  };
}

const OPEN_CLIP_FIXED: Readonly<Record<string, string>> = {
  positional_embedding: "embeddings.position_embedding.weight",
  "token_embedding.weight": "embeddings.token_embedding.weight",
  "ln_final.weight": "final_layer_norm.weight",
  "ln_final.bias": "final_layer_norm.bias",
};
const OPEN_CLIP_LAYER: Readonly<Record<string, string>> = {
  ln_1: "layer_norm1",
  ln_2: "layer_norm2",
  "mlp.c_fc": "mlp.fc1",
  "mlp.c_proj": "mlp.fc2",
  "attn.out_proj": "self_attn.out_proj",
};
/** Parts of OpenCLIP's text tower CLIPTextModel has no use for (the pooled projection, the contrastive scale). */
const OPEN_CLIP_UNUSED = new Set(["text_projection", "logit_scale", "attn_mask"]);

/**
 * SD 2.x: OpenCLIP's `transformer.resblocks.N` are CLIP's `encoder.layers.N`; its fused attention input
 * projection `in_proj_weight` [3·D, D] (and bias [3·D]) holds q, k and v one after the other, so each is a
 * contiguous third of its bytes.
 */
function openClipRename(layers: number): Rename {
  return (rest, e) => {
    const fixed = OPEN_CLIP_FIXED[rest];
    if (fixed) return renamed(e, fixed);
    if (OPEN_CLIP_UNUSED.has(rest)) return [];
    const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(rest);
    if (!m) return undefined;
    const layer = `encoder.layers.${m[1]}`;
    if (Number(m[1]) >= layers) return [];
    const tail = m[2] as string;
    const fused = /^attn\.in_proj_(weight|bias)$/.exec(tail);
    if (fused) {
      const rows = e.shape[0] as number;
      if (rows % 3 !== 0) return undefined;
      const third = e.length / 3;
      return (["q", "k", "v"] as const).map((p, k) => ({
        ...e,
        name: `${layer}.self_attn.${p}_proj.${fused[1]}`,
        shape: [rows / 3, ...e.shape.slice(1)],
        offset: e.offset + k * third,
        length: third,
      }));
    }
    const p = /^(.+)\.(weight|bias)$/.exec(tail);
    const mapped = p && OPEN_CLIP_LAYER[p[1] as string];
    return mapped ? renamed(e, `${layer}.${mapped}.${p[2]}`) : undefined;
  };
}

/**
 * The UNet, VAE and text encoder entries of an ldm-layout file under diffusers' names. `file` names the
 * checkpoint in messages.
 */
export function ldmToDiffusers(
  tensors: Iterable<TensorEntry>,
  layout: LdmLayout,
  file: string,
): LdmComponents {
  const parts: Array<[string, keyof LdmComponents, Rename]> = [
    [LDM_PREFIX.unet, "unet", unetRename(layout.unetLayersPerBlock)],
    [LDM_PREFIX.vae, "vae", vaeRename(layout.vaeLevels)],
    [LDM_PREFIX.clip, "textEncoder", clipRename(layout.textLayers)],
    [LDM_PREFIX.openClip, "textEncoder", openClipRename(layout.textLayers)],
  ];
  const out: LdmComponents = { unet: [], vae: [], textEncoder: [] };
  const unknown: string[] = [];
  for (const e of tensors) {
    const part = parts.find(([prefix]) => e.name.startsWith(prefix));
    if (!part) continue;
    const [prefix, component, rename] = part;
    const entries = rename(e.name.slice(prefix.length), e);
    if (entries) out[component].push(...entries);
    else unknown.push(e.name);
  }
  if (unknown.length > 0) {
    throw new ModelFileError(
      file,
      `holds ${unknown.length} tensor${unknown.length > 1 ? "s" : ""} no Stable Diffusion 1.x/2.x network has (${unknown.slice(0, 3).join(", ")}${unknown.length > 3 ? ", …" : ""}): not an SD 1.x/2.x checkpoint in the original layout, or one the engine does not implement`,
    );
  }
  return out;
}
