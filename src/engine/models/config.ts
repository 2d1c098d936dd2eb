/**
 * The diffusers / transformers config files of a Stable Diffusion checkpoint, validated with zod.
 *
 * Diffusers configs (model_index.json, unet/vae config.json) list every setting diffusers' classes take: a
 * value the engine does not implement is refused with a message naming the file, the setting and the value,
 * because silently ignoring it would compute a different function than diffusers. A setting those classes do
 * not take is ignored with a warning, as diffusers ignores it ("… are not expected and will be ignored"), so
 * that every config diffusers loads is read. Missing settings take diffusers' defaults (old checkpoints such
 * as SD 1.5 omit most of them).
 *
 * The text encoder's config comes from transformers, whose configs carry dozens of generic keys
 * (generation settings, torchscript flags) that do not affect CLIPTextModel; there only the settings the
 * encoder depends on are checked. Scheduler configs of any SD scheduler class are accepted: the engine
 * always samples with DDIM and takes the noise schedule (betas, offsets, prediction type) from them.
 */
import { z } from "zod";
import { childLogger } from "../../log.js";
import { ModelFileError } from "./errors.js";
import { readModelJson } from "./files.js";

/** Markers of model families the engine does not implement, checked before validation for a clear message. */
const OTHER_FAMILIES: Array<{ family: string; match: (cfg: Record<string, unknown>) => boolean }> = [
  {
    family: "a Stable Diffusion XL checkpoint",
    match: (c) =>
      /XL/.test(String(c._class_name ?? "")) ||
      "text_encoder_2" in c ||
      c.addition_embed_type === "text_time" ||
      c._class_name === "CLIPTextModelWithProjection",
  },
  {
    family: "a Stable Diffusion 3 checkpoint",
    match: (c) => /StableDiffusion3|SD3/.test(String(c._class_name ?? "")) || "text_encoder_3" in c,
  },
  { family: "a Flux checkpoint", match: (c) => /Flux/.test(String(c._class_name ?? "")) },
  {
    family: "a transformer-based (DiT) checkpoint",
    match: (c) => "transformer" in c || /Transformer2DModel$/.test(String(c._class_name ?? "")),
  },
];

function refuseOtherFamilies(file: string, cfg: Record<string, unknown>): void {
  for (const { family, match } of OTHER_FAMILIES) {
    if (match(cfg)) {
      throw new ModelFileError(
        file,
        `this is ${family}${cfg._class_name ? ` (${String(cfg._class_name)})` : ""}; the engine supports Stable Diffusion 1.x and 2.x only`,
      );
    }
  }
}

const component = (library: string, cls: string | readonly string[]) =>
  z.tuple([
    z.literal(library),
    Array.isArray(cls) ? z.enum(cls as [string, ...string[]]) : z.literal(cls as string),
  ]);
const absent = z.tuple([z.null(), z.null()]).optional();

/** Text-to-image checkpoints. Inpainting ones (9 input channels) cannot serve txt2img or Imagic. */
export const SD_PIPELINES = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"] as const;

export const ModelIndexSchema = z.strictObject({
  unet: component("diffusers", "UNet2DConditionModel"),
  vae: component("diffusers", "AutoencoderKL"),
  text_encoder: component("transformers", "CLIPTextModel"),
  tokenizer: component("transformers", ["CLIPTokenizer", "CLIPTokenizerFast"]),
  scheduler: z.tuple([z.literal("diffusers"), z.string().regex(/Scheduler$/)]),
  safety_checker: z.union([absent, component("stable_diffusion", "StableDiffusionSafetyChecker")]),
  feature_extractor: z.union([
    absent,
    component("transformers", ["CLIPImageProcessor", "CLIPFeatureExtractor"]),
  ]),
  // StableDiffusionPipeline's optional components: saved with the pipeline, never run by the engine (which
  // has no safety checker and no IP-Adapter; a pipeline saved after load_ip_adapter names its image encoder).
  image_encoder: z.union([absent, component("transformers", "CLIPVisionModelWithProjection")]),
  requires_safety_checker: z.boolean().optional(),
});
export type ModelIndex = z.infer<typeof ModelIndexSchema>;

const posInt = z.number().int().positive();
const intOrList = z.union([posInt, z.array(posInt).min(1)]);
/** diffusers' `sample_size`: one side, or [height, width] (an int or a tuple in diffusers). */
const sampleSize = z.union([posInt, z.tuple([posInt, posInt])]);

/** A sample_size as [height, width]. */
export function sampleSizeHW(s: number | readonly [number, number]): [number, number] {
  return typeof s === "number" ? [s, s] : [s[0], s[1]];
}

/** A per-level setting (one value for every level, or a list with one per level) as a list. */
export function perLevel(v: number | readonly number[], levels: number): number[] {
  return typeof v === "number" ? Array<number>(levels).fill(v) : [...v];
}

/** GroupNorm splits each level's channels into norm_num_groups groups: they must divide evenly. */
function checkGroups(
  c: { block_out_channels: number[]; norm_num_groups: number },
  ctx: z.RefinementCtx,
): void {
  const bad = c.block_out_channels.filter((ch) => ch % c.norm_num_groups !== 0);
  if (bad.length > 0) {
    ctx.addIssue({
      code: "custom",
      path: ["block_out_channels"],
      message: `each must be a multiple of norm_num_groups (${c.norm_num_groups}); ${bad.join(", ")} ${bad.length > 1 ? "are" : "is"} not`,
    });
  }
}

export const UNetConfigSchema = z
  .strictObject({
    in_channels: posInt.default(4),
    out_channels: posInt.default(4),
    sample_size: sampleSize.nullable().default(null),
    center_input_sample: z.literal(false).default(false),
    flip_sin_to_cos: z.boolean().default(true),
    freq_shift: z.number().int().default(0),
    down_block_types: z
      .array(z.enum(["CrossAttnDownBlock2D", "DownBlock2D"]))
      .min(1)
      .default(["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
    mid_block_type: z.literal("UNetMidBlock2DCrossAttn").default("UNetMidBlock2DCrossAttn"),
    up_block_types: z
      .array(z.enum(["CrossAttnUpBlock2D", "UpBlock2D"]))
      .min(1)
      .default(["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
    only_cross_attention: z.union([z.literal(false), z.array(z.literal(false))]).default(false),
    block_out_channels: z.array(posInt).min(1).default([320, 640, 1280, 1280]),
    layers_per_block: posInt.default(2),
    downsample_padding: z.number().int().nonnegative().default(1),
    /** The mid block's resnets divide their output by it (output_scale_factor); every SD checkpoint has 1. */
    mid_block_scale_factor: z.literal(1).default(1),
    dropout: z.number().default(0),
    act_fn: z.literal("silu").default("silu"),
    norm_num_groups: posInt.default(32),
    norm_eps: z.number().positive().default(1e-5),
    cross_attention_dim: posInt.default(1280),
    transformer_layers_per_block: intOrList.default(1),
    reverse_transformer_layers_per_block: z.null().default(null),
    encoder_hid_dim: z.null().default(null),
    encoder_hid_dim_type: z.null().default(null),
    /** Legacy naming: for SD 1.x/2.x this is the number of heads (a list: per level), not their width. */
    attention_head_dim: intOrList.default(8),
    num_attention_heads: intOrList.nullable().default(null),
    dual_cross_attention: z.literal(false).default(false),
    use_linear_projection: z.boolean().default(false),
    class_embed_type: z.null().default(null),
    addition_embed_type: z.null().default(null),
    addition_time_embed_dim: z.null().default(null),
    addition_embed_type_num_heads: z.number().int().default(64),
    num_class_embeds: z.null().default(null),
    upcast_attention: z.boolean().default(false),
    resnet_time_scale_shift: z.literal("default").default("default"),
    resnet_skip_time_act: z.literal(false).default(false),
    resnet_out_scale_factor: z.literal(1).default(1),
    time_embedding_type: z.literal("positional").default("positional"),
    time_embedding_dim: z.null().default(null),
    time_embedding_act_fn: z.null().default(null),
    timestep_post_act: z.null().default(null),
    time_cond_proj_dim: z.null().default(null),
    conv_in_kernel: z.literal(3).default(3),
    conv_out_kernel: z.literal(3).default(3),
    projection_class_embeddings_input_dim: z.null().default(null),
    attention_type: z.literal("default").default("default"),
    class_embeddings_concat: z.literal(false).default(false),
    mid_block_only_cross_attention: z.union([z.null(), z.literal(false)]).default(null),
    cross_attention_norm: z.null().default(null),
  })
  .superRefine((c, ctx) => {
    const levels = c.block_out_channels.length;
    const listed: Array<[string, unknown[] | number | null]> = [
      ["down_block_types", c.down_block_types],
      ["up_block_types", c.up_block_types],
      ["attention_head_dim", c.attention_head_dim],
      ["num_attention_heads", c.num_attention_heads],
      ["transformer_layers_per_block", c.transformer_layers_per_block],
    ];
    for (const [key, value] of listed) {
      if (Array.isArray(value) && value.length !== levels) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          message: `needs one entry per level of block_out_channels (${levels})`,
        });
      }
    }
    // UNet2DConditionModel.__init__ raises on it (diffusers issue 2011: attention_head_dim is the head count).
    if (c.num_attention_heads !== null) {
      ctx.addIssue({
        code: "custom",
        path: ["num_attention_heads"],
        message:
          "diffusers refuses it for UNet2DConditionModel; SD checkpoints give the head count as attention_head_dim",
      });
    }
    checkGroups(c, ctx);
    // Each level's attention splits its channels into heads of channels // heads (diffusers' integer
    // division: a remainder just narrows the attention's inner width); no head may be empty.
    if (Array.isArray(c.attention_head_dim) && c.attention_head_dim.length !== levels) return;
    const heads = perLevel(c.attention_head_dim, levels);
    const narrow = c.block_out_channels.findIndex((ch, i) => ch < (heads[i] as number));
    if (narrow >= 0) {
      ctx.addIssue({
        code: "custom",
        path: ["attention_head_dim"],
        message: `level ${narrow} has ${heads[narrow]} heads for ${c.block_out_channels[narrow]} channels (block_out_channels): at most one head per channel`,
      });
    }
  });
export type UNetConfig = z.infer<typeof UNetConfigSchema>;

export const VaeConfigSchema = z
  .strictObject({
    in_channels: posInt.default(3),
    out_channels: posInt.default(3),
    down_block_types: z.array(z.literal("DownEncoderBlock2D")).min(1).default(["DownEncoderBlock2D"]),
    up_block_types: z.array(z.literal("UpDecoderBlock2D")).min(1).default(["UpDecoderBlock2D"]),
    block_out_channels: z.array(posInt).min(1).default([64]),
    layers_per_block: posInt.default(1),
    act_fn: z.literal("silu").default("silu"),
    latent_channels: posInt.default(4),
    norm_num_groups: posInt.default(32),
    sample_size: sampleSize.default(32),
    scaling_factor: z.number().positive().default(0.18215),
    shift_factor: z.union([z.null(), z.literal(0)]).default(null),
    latents_mean: z.null().default(null),
    latents_std: z.null().default(null),
    force_upcast: z.boolean().default(true),
    use_quant_conv: z.literal(true).default(true),
    use_post_quant_conv: z.literal(true).default(true),
    mid_block_add_attention: z.literal(true).default(true),
  })
  .superRefine((c, ctx) => {
    const levels = c.block_out_channels.length;
    for (const key of ["down_block_types", "up_block_types"] as const) {
      if (c[key].length !== levels) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          message: `needs one entry per level of block_out_channels (${levels})`,
        });
      }
    }
    checkGroups(c, ctx);
  });
export type VaeConfig = z.infer<typeof VaeConfigSchema>;

export const TextEncoderConfigSchema = z.looseObject({
  architectures: z.array(z.literal("CLIPTextModel")).optional(),
  model_type: z.literal("clip_text_model").optional(),
  hidden_act: z.enum(["quick_gelu", "gelu"]).default("quick_gelu"),
  hidden_size: posInt,
  intermediate_size: posInt,
  num_attention_heads: posInt,
  num_hidden_layers: posInt,
  max_position_embeddings: posInt.default(77),
  vocab_size: posInt.default(49408),
  layer_norm_eps: z.number().positive().default(1e-5),
  bos_token_id: z.number().int().default(49406),
  eos_token_id: z.number().int().default(49407),
  pad_token_id: z.number().int().default(1),
});
export type TextEncoderConfig = z.infer<typeof TextEncoderConfigSchema>;

export const SchedulerConfigSchema = z
  .looseObject({
    num_train_timesteps: posInt.default(1000),
    beta_start: z.number().positive().default(0.0001),
    beta_end: z.number().positive().default(0.02),
    beta_schedule: z.enum(["linear", "scaled_linear", "squaredcos_cap_v2"]).default("linear"),
    trained_betas: z.array(z.number()).nullable().default(null),
    prediction_type: z.enum(["epsilon", "v_prediction"]).default("epsilon"),
    set_alpha_to_one: z.boolean().default(true),
    steps_offset: z.number().int().nonnegative().default(0),
    timestep_spacing: z.enum(["leading", "trailing", "linspace"]).default("leading"),
    clip_sample: z.boolean().default(true),
    clip_sample_range: z.number().positive().default(1),
    thresholding: z.literal(false).default(false),
    rescale_betas_zero_snr: z.boolean().default(false),
  })
  .superRefine((c, ctx) => {
    // Zero terminal SNR makes ᾱ at the last timestep 0, where an ε-prediction's x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ
    // divides by zero: trailing and linspace spacing sample that timestep first, so every image would be NaN.
    if (c.rescale_betas_zero_snr && c.prediction_type === "epsilon" && c.timestep_spacing !== "leading") {
      ctx.addIssue({
        code: "custom",
        path: ["rescale_betas_zero_snr"],
        message: `zero terminal SNR with epsilon prediction and ${c.timestep_spacing} spacing samples timestep ${c.num_train_timesteps - 1}, where ᾱ = 0 and x̂₀ divides by zero; such checkpoints are trained for v_prediction`,
      });
    }
  });
export type SchedulerConfig = z.infer<typeof SchedulerConfigSchema>;

/** Reads a JSON object from a file, or throws a ModelFileError naming the file. */
export function readJsonObject(file: string): Record<string, unknown> {
  const json = readModelJson(file);
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelFileError(file, "is not a JSON object");
  }
  return json as Record<string, unknown>;
}

function valueAt(obj: unknown, path: readonly PropertyKey[]): unknown {
  let cur = obj;
  for (const key of path) cur = (cur as Record<PropertyKey, unknown> | undefined)?.[key];
  return cur;
}

const log = childLogger("engine");

/** One line per problem: the setting, the value found, and what zod expected. */
function describeIssues(error: z.ZodError, raw: unknown): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map(String).join(".");
      const value = valueAt(raw, issue.path);
      const found = value === undefined ? "missing" : JSON.stringify(value);
      return `setting "${path}" = ${found} is not supported (${issue.message})`;
    })
    .join("; ");
}

/**
 * Validates a parsed config against `schema`. Keys starting with "_" (`_class_name`, `_diffusers_version`,
 * `_name_or_path`) are bookkeeping and are not validated, except `_class_name` which `expectClass` checks.
 */
export function parseConfig<S extends z.ZodType>(
  schema: S,
  raw: Record<string, unknown>,
  file: string,
  expectClass?: readonly string[],
): z.output<S> {
  refuseOtherFamilies(file, raw);
  const cls = raw._class_name;
  if (expectClass && cls !== undefined && !expectClass.includes(String(cls))) {
    throw new ModelFileError(
      file,
      `_class_name is ${JSON.stringify(cls)}, expected ${expectClass.join(" or ")}`,
    );
  }
  const settings = Object.fromEntries(Object.entries(raw).filter(([k]) => !k.startsWith("_")));
  const first = schema.safeParse(settings);
  const unknown = first.success ? [] : unknownKeys(first.error);
  if (unknown.length > 0) {
    log.warn(
      { file, settings: unknown },
      `${file}: ignoring setting${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => `"${k}"`).join(", ")}, which diffusers' classes do not take (diffusers ignores them too; one added by a later diffusers may change what the model computes)`,
    );
  }
  // Parsed again without them: refinements run only on an object free of other issues.
  const result =
    unknown.length > 0
      ? schema.safeParse(Object.fromEntries(Object.entries(settings).filter(([k]) => !unknown.includes(k))))
      : first;
  if (!result.success) throw new ModelFileError(file, describeIssues(result.error, settings));
  return result.data;
}

/** Top-level settings a strict schema does not know. */
function unknownKeys(error: z.ZodError): string[] {
  return error.issues.flatMap((issue) =>
    issue.code === "unrecognized_keys" && issue.path.length === 0 ? issue.keys : [],
  );
}

export function loadConfig<S extends z.ZodType>(
  schema: S,
  file: string,
  expectClass?: readonly string[],
): z.output<S> {
  return parseConfig(schema, readJsonObject(file), file, expectClass);
}
