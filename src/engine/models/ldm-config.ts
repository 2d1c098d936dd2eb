/**
 * The diffusers configs of a single-file (ldm layout) checkpoint given without MODEL_CONFIG, from its
 * tensor names and shapes alone — what diffusers' `from_single_file` decides without `config=`
 * (single_file_utils.py: infer_diffusers_model_type picks SD 1.x ("v1") or SD 2.x ("v2") and takes the
 * configs of stable-diffusion-v1-5 or stabilityai/stable-diffusion-2-1). Here the sizes (channels, levels,
 * layers per block, context width, text encoder width and depth) are read from the shapes, so that a file
 * shaped like SD 1.5 or SD 2.1 gets exactly those repositories' configs, and a differently sized one its
 * own; what shapes cannot tell comes from the family:
 * - heads: SD 1.x has 8 per level (`attention_head_dim` 8); SD 2.x heads of 64 channels ([5, 10, 20, 20]);
 * - SD 2.x: `upcast_attention`, a 768-pixel sample size and **v-prediction**, as stable-diffusion-2-1 (the
 *   768-v model; diffusers gives every v2 file that config). A 512-pixel SD 2.x-base model predicts ε:
 *   set MODEL_PREDICTION_TYPE=epsilon, or MODEL_CONFIG to its diffusers folder;
 * - the scheduler: each repository's (PNDM for 1.5, DDIM for 2.1: the engine samples with DDIM on their
 *   betas either way); the tokenizer pads with `<|endoftext|>` (SD 1.x) or `!` (SD 2.x).
 * Other families (SDXL, SD 3, Flux, inpainting, depth, upscaler, ControlNet, instruct-pix2pix) are refused
 * in one line naming what was found.
 */
import {
  type ModelIndex,
  ModelIndexSchema,
  parseConfig,
  type SchedulerConfig,
  SchedulerConfigSchema,
  type TextEncoderConfig,
  TextEncoderConfigSchema,
  type UNetConfig,
  UNetConfigSchema,
  type VaeConfig,
  VaeConfigSchema,
} from "./config.js";
import { ModelFileError } from "./errors.js";
import { LDM_PREFIX } from "./ldm-names.js";

export type SdFamily = "sd1" | "sd2";

export interface InferredConfigs {
  readonly family: SdFamily;
  readonly index: ModelIndex;
  readonly unet: UNetConfig;
  readonly vae: VaeConfig;
  readonly textEncoder: TextEncoderConfig;
  readonly scheduler: { readonly className: string; readonly config: SchedulerConfig };
  /** The tokenizer's pad token. */
  readonly padToken: string;
}

/** A tensor's shape by its name in the file. */
export type ShapeTable = ReadonlyMap<string, readonly number[]>;

const U = LDM_PREFIX.unet;
const V = LDM_PREFIX.vae;

/** Input channels of other SD-derived UNets, which need inputs the engine does not feed. */
const OTHER_IN_CHANNELS: Readonly<Record<number, string>> = {
  5: "a depth-to-image checkpoint",
  7: "an x4 upscaler checkpoint",
  8: "an instruct-pix2pix checkpoint",
  9: "an inpainting checkpoint",
};

/** Markers of families the engine does not implement, by a name only they have. */
const OTHER_FAMILIES: Array<{ family: string; match: (name: string) => boolean }> = [
  { family: "a Stable Diffusion XL checkpoint", match: (n) => n.startsWith("conditioner.embedders.") },
  { family: "a Stable Diffusion 3 checkpoint", match: (n) => n.includes("joint_blocks.") },
  { family: "a Flux checkpoint", match: (n) => n.includes("double_blocks.") },
  { family: "a ControlNet", match: (n) => n.startsWith("control_model.") },
  {
    family: "a class-conditioned UNet (SDXL or an upscaler)",
    match: (n) => n.startsWith(`${U}label_emb.`),
  },
];

const SD_SCHEDULER = {
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  clip_sample: false,
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  trained_betas: null,
};

/** SD 2.x's attention heads are 64 channels wide (num_head_channels in its ldm config). */
const SD2_HEAD_CHANNELS = 64;
/** CLIP ViT-L/14 and OpenCLIP ViT-H/14 text towers both have heads of 64 channels. */
const CLIP_HEAD_CHANNELS = 64;

/**
 * Refuses a file that is no SD 1.x/2.x text-to-image checkpoint in the original layout, by its tensor
 * names and the UNet's input channels: what a header alone tells (hub.ts asks it before downloading).
 */
export function checkLdmFamily(shapes: ShapeTable, file: string): void {
  const names = [...shapes.keys()];
  for (const { family, match } of OTHER_FAMILIES) {
    const found = names.find(match);
    if (found) {
      throw new ModelFileError(
        file,
        `this is ${family} (it holds ${found}); the engine supports Stable Diffusion 1.x and 2.x only`,
      );
    }
  }
  const convIn = shapes.get(`${U}input_blocks.0.0.weight`);
  if (!convIn) {
    const diffusersNamed = names.some((n) => /^(unet\.)?(conv_in|down_blocks\.0\.)/.test(n));
    throw new ModelFileError(
      file,
      diffusersNamed
        ? "holds diffusers-named weights, not a single-file checkpoint: set MODEL to the diffusers folder"
        : `is not a Stable Diffusion checkpoint in the original layout: it has no ${U}input_blocks.0.0.weight`,
    );
  }
  const inChannels = convIn[1];
  if (inChannels !== 4) {
    throw new ModelFileError(
      file,
      `this is ${(inChannels !== undefined && OTHER_IN_CHANNELS[inChannels]) || "not a text-to-image checkpoint"} (the UNet takes ${inChannels} input channels, not 4); the engine supports Stable Diffusion 1.x and 2.x text-to-image checkpoints only`,
    );
  }
}

export function inferLdmConfigs(shapes: ShapeTable, file: string): InferredConfigs {
  checkLdmFamily(shapes, file);
  const need = (name: string, what: string): readonly number[] => {
    const s = shapes.get(name);
    if (!s) throw new ModelFileError(file, `has no tensor ${name} (${what})`);
    return s;
  };
  const family = textFamily(shapes, file);
  const unet = parseConfig(UNetConfigSchema, unetConfig(shapes, family, need, file), file);
  const vae = parseConfig(VaeConfigSchema, vaeConfig(shapes, family, need), file);
  const textEncoder = parseConfig(TextEncoderConfigSchema, textConfig(shapes, family, need, file), file);
  const className = family === "sd1" ? "PNDMScheduler" : "DDIMScheduler";
  const scheduler = {
    className,
    config: parseConfig(
      SchedulerConfigSchema,
      family === "sd1" ? SD_SCHEDULER : { ...SD_SCHEDULER, prediction_type: "v_prediction" },
      file,
    ),
  };
  const index = ModelIndexSchema.parse({
    unet: ["diffusers", "UNet2DConditionModel"],
    vae: ["diffusers", "AutoencoderKL"],
    text_encoder: ["transformers", "CLIPTextModel"],
    tokenizer: ["transformers", "CLIPTokenizer"],
    scheduler: ["diffusers", className],
  });
  return {
    family,
    index,
    unet,
    vae,
    textEncoder,
    scheduler,
    padToken: family === "sd1" ? "<|endoftext|>" : "!",
  };
}

/** OpenCLIP ViT-H/14's width: diffusers calls a file whose UNet attends to 1024 channels v2. */
const SD2_CONTEXT = 1024;

/** The prefix of a text encoder under transformers' names (SD 1.x's, or SD 2.x's re-saved), if any. */
function clipPrefix(shapes: ShapeTable): string | undefined {
  const names = [...shapes.keys()];
  if (!names.some((n) => n.startsWith(LDM_PREFIX.clip))) return undefined;
  return names.some((n) => n.startsWith(`${LDM_PREFIX.clip}text_model.`))
    ? `${LDM_PREFIX.clip}text_model.`
    : LDM_PREFIX.clip;
}

/**
 * SD 1.x conditions on OpenAI's CLIP ViT-L (transformers names), SD 2.x on OpenCLIP ViT-H: under its own
 * names, or under transformers' when a tool re-saved it so; diffusers tells the two apart by the width
 * the UNet attends to, which is the text encoder's.
 */
function textFamily(shapes: ShapeTable, file: string): SdFamily {
  const clip = clipPrefix(shapes);
  if (clip)
    return shapes.get(`${clip}embeddings.token_embedding.weight`)?.[1] === SD2_CONTEXT ? "sd2" : "sd1";
  if (shapes.has(`${LDM_PREFIX.openClip}token_embedding.weight`)) return "sd2";
  throw new ModelFileError(
    file,
    `holds no text encoder (neither ${LDM_PREFIX.clip}* of SD 1.x nor ${LDM_PREFIX.openClip}* of SD 2.x)`,
  );
}

type Need = (name: string, what: string) => readonly number[];

/** Distinct values of the number after `prefix` in the names that have one. */
function indices(shapes: ShapeTable, prefix: string): number[] {
  const found = new Set<number>();
  for (const n of shapes.keys()) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(n.slice(prefix.length));
    if (m) found.add(Number(m[1]));
  }
  return [...found].sort((a, b) => a - b);
}

function unetConfig(shapes: ShapeTable, family: SdFamily, need: Need, file: string): Record<string, unknown> {
  const blocks = indices(shapes, `${U}input_blocks.`);
  const downsamplers = blocks.filter((i) => shapes.has(`${U}input_blocks.${i}.0.op.weight`));
  const levels = downsamplers.length + 1;
  // input_blocks: conv_in, then layers_per_block blocks per level and a downsampler below each but the last.
  const layersPerBlock = (blocks.length - 1 - downsamplers.length) / levels;
  const per = layersPerBlock + 1;
  if (
    !Number.isInteger(layersPerBlock) ||
    layersPerBlock < 1 ||
    downsamplers.some((i, l) => i !== per * (l + 1))
  ) {
    throw new ModelFileError(
      file,
      `its UNet's input_blocks (${blocks.length}, downsamplers at ${downsamplers.join(", ")}) are not laid out as an SD 1.x/2.x UNet's`,
    );
  }
  const firstOfLevel = (l: number) => per * l + 1;
  const blockOut = Array.from(
    { length: levels },
    (_, l) =>
      need(`${U}input_blocks.${firstOfLevel(l)}.0.out_layers.3.weight`, `level ${l}'s first resnet`)[0],
  ) as number[];
  const attends = (block: string) => shapes.has(`${U}${block}.1.proj_in.weight`);
  const downTypes = blockOut.map((_, l) =>
    attends(`input_blocks.${firstOfLevel(l)}`) ? "CrossAttnDownBlock2D" : "DownBlock2D",
  );
  const upTypes = blockOut.map((_, l) =>
    attends(`output_blocks.${per * l}`) ? "CrossAttnUpBlock2D" : "UpBlock2D",
  );
  const first = downTypes.indexOf("CrossAttnDownBlock2D");
  if (first < 0) throw new ModelFileError(file, "its UNet has no cross-attention: not an SD 1.x/2.x UNet");
  const attention = `${U}input_blocks.${firstOfLevel(first)}.1`;
  const contextDim = need(`${attention}.transformer_blocks.0.attn2.to_k.weight`, "the cross-attention")[1];
  const linear = need(`${attention}.proj_in.weight`, "the attention's input projection").length === 2;
  const transformerLayers = indices(shapes, `${attention}.transformer_blocks.`).length;
  const heads =
    family === "sd1"
      ? 8
      : blockOut.map((c) => {
          if (c % SD2_HEAD_CHANNELS !== 0) {
            throw new ModelFileError(
              file,
              `its UNet level of ${c} channels cannot hold heads of ${SD2_HEAD_CHANNELS}`,
            );
          }
          return c / SD2_HEAD_CHANNELS;
        });
  return {
    in_channels: 4,
    out_channels: need(`${U}out.2.weight`, "the UNet's conv_out")[0],
    block_out_channels: blockOut,
    layers_per_block: layersPerBlock,
    down_block_types: downTypes,
    up_block_types: upTypes,
    cross_attention_dim: contextDim,
    attention_head_dim: heads,
    transformer_layers_per_block: transformerLayers,
    use_linear_projection: linear,
    upcast_attention: family === "sd2",
    sample_size: family === "sd1" ? 64 : 96,
  };
}

function vaeConfig(shapes: ShapeTable, family: SdFamily, need: Need): Record<string, unknown> {
  const levels = indices(shapes, `${V}encoder.down.`);
  const blockOut = levels.map(
    (l) => need(`${V}encoder.down.${l}.block.0.conv2.weight`, `the VAE encoder's level ${l}`)[0],
  );
  return {
    in_channels: need(`${V}encoder.conv_in.weight`, "the VAE's encoder")[1],
    out_channels: need(`${V}decoder.conv_out.weight`, "the VAE's decoder")[0],
    block_out_channels: blockOut,
    down_block_types: blockOut.map(() => "DownEncoderBlock2D"),
    up_block_types: blockOut.map(() => "UpDecoderBlock2D"),
    layers_per_block: indices(shapes, `${V}encoder.down.0.block.`).length,
    latent_channels: need(`${V}decoder.conv_in.weight`, "the VAE's decoder")[1],
    sample_size: family === "sd1" ? 512 : 768,
  };
}

function textConfig(shapes: ShapeTable, family: SdFamily, need: Need, file: string): Record<string, unknown> {
  // The head count is the width over CLIP's 64-channel heads: a width that is no multiple of 64 is no
  // CLIP text tower the configs could describe.
  const heads = (hidden: number) => {
    if (hidden % CLIP_HEAD_CHANNELS !== 0) {
      throw new ModelFileError(
        file,
        `its text encoder's width of ${hidden} channels cannot hold CLIP's heads of ${CLIP_HEAD_CHANNELS}; give its configs with MODEL_CONFIG`,
      );
    }
    return hidden / CLIP_HEAD_CHANNELS;
  };
  // Both repositories' text_encoder/config.json carry CLIP's original token ids (bos 0, eos 2, pad 1);
  // the engine's tokenizer takes its own from the vocabulary.
  const ids = {
    architectures: ["CLIPTextModel"],
    model_type: "clip_text_model",
    bos_token_id: 0,
    eos_token_id: 2,
    pad_token_id: 1,
    layer_norm_eps: 1e-5,
  };
  const p = clipPrefix(shapes);
  if (p) {
    const [vocab, hidden] = need(`${p}embeddings.token_embedding.weight`, "the text encoder's tokens") as [
      number,
      number,
    ];
    return {
      ...ids,
      // Under transformers' names the file holds the layers diffusers runs (SD 2.x's 23 included).
      hidden_act: family === "sd1" ? "quick_gelu" : "gelu",
      hidden_size: hidden,
      intermediate_size: need(`${p}encoder.layers.0.mlp.fc1.weight`, "the text encoder's MLP")[0],
      num_attention_heads: heads(hidden),
      num_hidden_layers: indices(shapes, `${p}encoder.layers.`).length,
      max_position_embeddings: need(
        `${p}embeddings.position_embedding.weight`,
        "the text encoder's positions",
      )[0],
      vocab_size: vocab,
    };
  }
  const o = LDM_PREFIX.openClip;
  const [vocab, hidden] = need(`${o}token_embedding.weight`, "the text encoder's tokens") as [number, number];
  return {
    ...ids,
    hidden_act: "gelu",
    hidden_size: hidden,
    intermediate_size: need(`${o}transformer.resblocks.0.mlp.c_fc.weight`, "the text encoder's MLP")[0],
    num_attention_heads: heads(hidden),
    // SD 2.x takes OpenCLIP's penultimate layer: diffusers' config leaves the last one out of an original
    // checkpoint's whole tower (24 for ViT-H, with the text_projection only the OpenCLIP model has). A file
    // diffusers' conversion script wrote from a diffusers folder holds that folder's layers (23) and no
    // projection: every one is the text encoder diffusers runs.
    num_hidden_layers:
      indices(shapes, `${o}transformer.resblocks.`).length - (shapes.has(`${o}text_projection`) ? 1 : 0),
    max_position_embeddings: need(`${o}positional_embedding`, "the text encoder's positions")[0],
    vocab_size: vocab,
  };
}
