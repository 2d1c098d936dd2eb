/**
 * The config files of the hub repositories of Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5)
 * and 2.1 (stabilityai/stable-diffusion-2-1), as published (bookkeeping keys left out). diffusers fills the
 * settings they omit with its defaults, as the engine's schemas do, so comparisons are made after parsing.
 * The config tests load them as real-world configs; single-file inference must reproduce them.
 */
const DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
const UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
const UNET_COMMON = {
  act_fn: "silu",
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  down_block_types: DOWN,
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  up_block_types: UP,
};
export const SD15 = {
  unet: { ...UNET_COMMON, attention_head_dim: 8, cross_attention_dim: 768, sample_size: 64 },
  vae: {
    act_fn: "silu",
    block_out_channels: [128, 256, 512, 512],
    down_block_types: [
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
    ],
    in_channels: 3,
    latent_channels: 4,
    layers_per_block: 2,
    norm_num_groups: 32,
    out_channels: 3,
    sample_size: 512,
    up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  },
  textEncoder: {
    architectures: ["CLIPTextModel"],
    attention_dropout: 0,
    bos_token_id: 0,
    dropout: 0,
    eos_token_id: 2,
    hidden_act: "quick_gelu",
    hidden_size: 768,
    initializer_factor: 1,
    initializer_range: 0.02,
    intermediate_size: 3072,
    layer_norm_eps: 1e-5,
    max_position_embeddings: 77,
    model_type: "clip_text_model",
    num_attention_heads: 12,
    num_hidden_layers: 12,
    pad_token_id: 1,
    projection_dim: 768,
    vocab_size: 49408,
  },
  scheduler: {
    _class_name: "PNDMScheduler",
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
    trained_betas: null,
  },
};
export const SD21 = {
  unet: {
    ...UNET_COMMON,
    attention_head_dim: [5, 10, 20, 20],
    cross_attention_dim: 1024,
    dual_cross_attention: false,
    num_class_embeds: null,
    only_cross_attention: false,
    sample_size: 96,
    upcast_attention: true,
    use_linear_projection: true,
  },
  vae: { ...SD15.vae, sample_size: 768 },
  textEncoder: {
    ...SD15.textEncoder,
    hidden_act: "gelu",
    hidden_size: 1024,
    intermediate_size: 4096,
    num_attention_heads: 16,
    num_hidden_layers: 23,
    projection_dim: 512,
  },
  scheduler: { ...SD15.scheduler, _class_name: "DDIMScheduler", prediction_type: "v_prediction" },
};
