/**
 * Config inference for single-file checkpoints from tensor names and shapes alone, on tables shaped like
 * the real SD 1.5 (`v1-5-pruned-emaonly.safetensors`) and SD 2.1 (`v2-1_768-ema-pruned.safetensors`)
 * files — built here from the ldm networks' structure (ldm/modules/diffusionmodules/openaimodel.py's
 * UNetModel, model.py's Encoder/Decoder, CLIP ViT-L/14 and OpenCLIP ViT-H/14), no data: inference needs
 * none. The expected configs are the hub repositories' config.json files, which diffusers loads for such
 * files (stable-diffusion-v1-5/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1). The renamed
 * tables are then fed to the engine's own UNet, VAE and text encoder builders: every parameter they ask
 * for must exist with the shape they expect, and every renamed tensor must be asked for.
 */
import { describe, expect, it } from "vitest";
import {
  textEncoderGraph,
  unetGraph,
  vaeDecodeGraph,
  vaeEncodeGraph,
} from "../../../src/engine/models/components.js";
import {
  parseConfig,
  SchedulerConfigSchema,
  TextEncoderConfigSchema,
  UNetConfigSchema,
  VaeConfigSchema,
} from "../../../src/engine/models/config.js";
import { inferLdmConfigs, type ShapeTable } from "../../../src/engine/models/ldm-config.js";
import { ldmToDiffusers } from "../../../src/engine/models/ldm-names.js";
import type { WeightSource } from "../../../src/engine/models/params.js";
import { type TensorEntry, tensorFile } from "../../../src/engine/models/tensor-file.js";
import { weightStore } from "../../../src/engine/models/weights.js";
import { modelFileErrorOf } from "../../helpers/model-files.js";

type Table = Map<string, number[]>;

/** ldm's UNetModel: ResBlocks and SpatialTransformers as openaimodel.py numbers them. */
function unetTable(
  t: Table,
  o: { ch: number; mult: number[]; res: number; ctx: number; linear: boolean; inCh?: number },
) {
  const add = (n: string, s: number[]) => t.set(`model.diffusion_model.${n}`, s);
  const emb = o.ch * 4;
  const conv = (n: string, cout: number, cin: number, k: number) => {
    add(`${n}.weight`, k ? [cout, cin, k, k] : [cout, cin]);
    add(`${n}.bias`, [cout]);
  };
  const norm = (n: string, c: number) => {
    add(`${n}.weight`, [c]);
    add(`${n}.bias`, [c]);
  };
  const resblock = (n: string, cin: number, cout: number) => {
    norm(`${n}.in_layers.0`, cin);
    conv(`${n}.in_layers.2`, cout, cin, 3);
    conv(`${n}.emb_layers.1`, cout, emb, 0);
    norm(`${n}.out_layers.0`, cout);
    conv(`${n}.out_layers.3`, cout, cout, 3);
    if (cin !== cout) conv(`${n}.skip_connection`, cout, cin, 1);
  };
  const attention = (n: string, c: number) => {
    norm(`${n}.norm`, c);
    conv(`${n}.proj_in`, c, c, o.linear ? 0 : 1);
    const b = `${n}.transformer_blocks.0`;
    for (const a of ["attn1", "attn2"]) {
      add(`${b}.${a}.to_q.weight`, [c, c]);
      add(`${b}.${a}.to_k.weight`, [c, a === "attn1" ? c : o.ctx]);
      add(`${b}.${a}.to_v.weight`, [c, a === "attn1" ? c : o.ctx]);
      conv(`${b}.${a}.to_out.0`, c, c, 0);
    }
    conv(`${b}.ff.net.0.proj`, 8 * c, c, 0);
    conv(`${b}.ff.net.2`, c, 4 * c, 0);
    for (const k of [1, 2, 3]) norm(`${b}.norm${k}`, c);
    conv(`${n}.proj_out`, c, c, o.linear ? 0 : 1);
  };
  conv("time_embed.0", emb, o.ch, 0);
  conv("time_embed.2", emb, emb, 0);
  conv("input_blocks.0.0", o.ch, o.inCh ?? 4, 3);
  const attends = (l: number) => l < o.mult.length - 1;
  const skips = [o.ch];
  let cur = o.ch;
  let i = 1;
  o.mult.forEach((m, l) => {
    for (let r = 0; r < o.res; r++, i++) {
      resblock(`input_blocks.${i}.0`, cur, o.ch * m);
      cur = o.ch * m;
      if (attends(l)) attention(`input_blocks.${i}.1`, cur);
      skips.push(cur);
    }
    if (l < o.mult.length - 1) {
      conv(`input_blocks.${i++}.0.op`, cur, cur, 3);
      skips.push(cur);
    }
  });
  resblock("middle_block.0", cur, cur);
  attention("middle_block.1", cur);
  resblock("middle_block.2", cur, cur);
  i = 0;
  for (let l = o.mult.length - 1; l >= 0; l--) {
    for (let r = 0; r <= o.res; r++, i++) {
      const cout = o.ch * (o.mult[l] as number);
      resblock(`output_blocks.${i}.0`, cur + (skips.pop() as number), cout);
      cur = cout;
      if (attends(l)) attention(`output_blocks.${i}.1`, cur);
      if (l > 0 && r === o.res) conv(`output_blocks.${i}.${attends(l) ? 2 : 1}.conv`, cur, cur, 3);
    }
  }
  norm("out.0", o.ch);
  conv("out.2", 4, o.ch, 3);
}

/** ldm's AutoencoderKL (ch 128, ch_mult [1, 2, 4, 4], 2 resnets, z 4), as model.py names it. */
function vaeTable(t: Table) {
  const add = (n: string, s: number[]) => t.set(`first_stage_model.${n}`, s);
  const conv = (n: string, cout: number, cin: number, k: number) => {
    add(`${n}.weight`, [cout, cin, k, k]);
    add(`${n}.bias`, [cout]);
  };
  const norm = (n: string, c: number) => {
    add(`${n}.weight`, [c]);
    add(`${n}.bias`, [c]);
  };
  const resnet = (n: string, cin: number, cout: number) => {
    norm(`${n}.norm1`, cin);
    conv(`${n}.conv1`, cout, cin, 3);
    norm(`${n}.norm2`, cout);
    conv(`${n}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${n}.nin_shortcut`, cout, cin, 1);
  };
  const mid = (n: string, c: number) => {
    resnet(`${n}.mid.block_1`, c, c);
    norm(`${n}.mid.attn_1.norm`, c);
    for (const p of ["q", "k", "v", "proj_out"]) conv(`${n}.mid.attn_1.${p}`, c, c, 1);
    resnet(`${n}.mid.block_2`, c, c);
  };
  const mult = [1, 2, 4, 4].map((m) => 128 * m);
  conv("encoder.conv_in", 128, 3, 3);
  let cur = 128;
  mult.forEach((c, l) => {
    for (let r = 0; r < 2; r++) {
      resnet(`encoder.down.${l}.block.${r}`, cur, c);
      cur = c;
    }
    if (l < 3) conv(`encoder.down.${l}.downsample.conv`, c, c, 3);
  });
  mid("encoder", cur);
  norm("encoder.norm_out", cur);
  conv("encoder.conv_out", 8, cur, 3);
  conv("quant_conv", 8, 8, 1);
  conv("post_quant_conv", 4, 4, 1);
  conv("decoder.conv_in", cur, 4, 3);
  mid("decoder", cur);
  for (let l = 3; l >= 0; l--) {
    for (let r = 0; r < 3; r++) {
      resnet(`decoder.up.${l}.block.${r}`, cur, mult[l] as number);
      cur = mult[l] as number;
    }
    if (l > 0) conv(`decoder.up.${l}.upsample.conv`, cur, cur, 3);
  }
  norm("decoder.norm_out", cur);
  conv("decoder.conv_out", 3, cur, 3);
}

/** SD 1.x: transformers' CLIPTextModel (ViT-L/14: width 768, 12 layers) as the ldm files hold it. */
function clipTable(t: Table) {
  const p = "cond_stage_model.transformer.text_model.";
  t.set(`${p}embeddings.token_embedding.weight`, [49408, 768]);
  t.set(`${p}embeddings.position_embedding.weight`, [77, 768]);
  t.set(`${p}embeddings.position_ids`, [1, 77]);
  for (let l = 0; l < 12; l++) {
    const n = `${p}encoder.layers.${l}.`;
    for (const x of ["q", "k", "v", "out"]) {
      t.set(`${n}self_attn.${x}_proj.weight`, [768, 768]);
      t.set(`${n}self_attn.${x}_proj.bias`, [768]);
    }
    for (const x of ["layer_norm1", "layer_norm2"]) {
      t.set(`${n}${x}.weight`, [768]);
      t.set(`${n}${x}.bias`, [768]);
    }
    t.set(`${n}mlp.fc1.weight`, [3072, 768]);
    t.set(`${n}mlp.fc1.bias`, [3072]);
    t.set(`${n}mlp.fc2.weight`, [768, 3072]);
    t.set(`${n}mlp.fc2.bias`, [768]);
  }
  t.set(`${p}final_layer_norm.weight`, [768]);
  t.set(`${p}final_layer_norm.bias`, [768]);
}

/** SD 2.x: OpenCLIP ViT-H/14's text tower (width 1024, 24 resblocks) under `cond_stage_model.model.`. */
function openClipTable(t: Table) {
  const p = "cond_stage_model.model.";
  t.set(`${p}token_embedding.weight`, [49408, 1024]);
  t.set(`${p}positional_embedding`, [77, 1024]);
  t.set(`${p}text_projection`, [1024, 1024]);
  t.set(`${p}logit_scale`, []);
  t.set(`${p}ln_final.weight`, [1024]);
  t.set(`${p}ln_final.bias`, [1024]);
  for (let l = 0; l < 24; l++) {
    const n = `${p}transformer.resblocks.${l}.`;
    t.set(`${n}attn.in_proj_weight`, [3072, 1024]);
    t.set(`${n}attn.in_proj_bias`, [3072]);
    t.set(`${n}attn.out_proj.weight`, [1024, 1024]);
    t.set(`${n}attn.out_proj.bias`, [1024]);
    for (const x of ["ln_1", "ln_2"]) {
      t.set(`${n}${x}.weight`, [1024]);
      t.set(`${n}${x}.bias`, [1024]);
    }
    t.set(`${n}mlp.c_fc.weight`, [4096, 1024]);
    t.set(`${n}mlp.c_fc.bias`, [4096]);
    t.set(`${n}mlp.c_proj.weight`, [1024, 4096]);
    t.set(`${n}mlp.c_proj.bias`, [1024]);
  }
}

/** What an ldm training checkpoint also holds: the EMA bookkeeping and the schedule's buffers. */
function extras(t: Table) {
  t.set("model_ema.decay", []);
  t.set("model_ema.num_updates", []);
  t.set("alphas_cumprod", [1000]);
  t.set("betas", [1000]);
}

function sd15(): Table {
  const t: Table = new Map();
  unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 768, linear: false });
  vaeTable(t);
  clipTable(t);
  extras(t);
  return t;
}

function sd21(): Table {
  const t: Table = new Map();
  unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 1024, linear: true });
  vaeTable(t);
  openClipTable(t);
  extras(t);
  return t;
}

// The hub repositories' config files, as published (diffusers fills the settings they omit with its
// defaults; so does the engine's schema, so both sides are compared after parsing).
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
const SD15 = {
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
const SD21 = {
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

const TEXT_KEYS = Object.keys(TextEncoderConfigSchema.shape);
const textSettings = (c: Record<string, unknown>) => Object.fromEntries(TEXT_KEYS.map((k) => [k, c[k]]));

function entriesOf(table: ShapeTable): TensorEntry[] {
  return [...table].map(([name, shape]) => ({
    name,
    shape,
    dtype: "F16",
    offset: 0,
    length: 0,
    file: "table",
  }));
}

/** A WeightSource over entries that records which names a builder asks for (no data is ever read). */
function recording(entries: TensorEntry[]): WeightSource & { asked: Set<string> } {
  const store = weightStore(tensorFile("table", entries));
  const asked = new Set<string>();
  return {
    asked,
    has: (name) => store.has(name),
    data: (name, request) => {
      asked.add(name);
      return store.data(name, request);
    },
  };
}

const FAMILIES = [
  { name: "SD 1.5", table: sd15, expected: SD15, family: "sd1", pad: "<|endoftext|>" },
  { name: "SD 2.1", table: sd21, expected: SD21, family: "sd2", pad: "!" },
] as const;

describe("single-file config inference (diffusers' from_single_file without config=)", () => {
  for (const m of FAMILIES) {
    it(`${m.name}: exactly the hub repository's configs`, () => {
      const got = inferLdmConfigs(m.table(), "model.safetensors");
      expect(got.family).toBe(m.family);
      expect(got.padToken).toBe(m.pad);
      expect(got.unet).toEqual(parseConfig(UNetConfigSchema, m.expected.unet, "unet/config.json"));
      expect(got.vae).toEqual(parseConfig(VaeConfigSchema, m.expected.vae, "vae/config.json"));
      expect(textSettings(got.textEncoder)).toEqual(
        textSettings(
          parseConfig(TextEncoderConfigSchema, m.expected.textEncoder, "text_encoder/config.json"),
        ),
      );
      const { _class_name, ...scheduler } = m.expected.scheduler;
      expect(got.scheduler.className).toBe(_class_name);
      expect(got.scheduler.config).toEqual(
        parseConfig(SchedulerConfigSchema, scheduler, "scheduler_config.json"),
      );
    });

    it(`${m.name}: the renamed tensors are exactly what the engine's UNet, VAE and text encoder read`, () => {
      const table = m.table();
      const c = inferLdmConfigs(table, "model.safetensors");
      const parts = ldmToDiffusers(
        entriesOf(table),
        {
          unetLayersPerBlock: c.unet.layers_per_block,
          vaeLevels: c.vae.block_out_channels.length,
          textLayers: c.textEncoder.num_hidden_layers,
        },
        "model.safetensors",
      );
      // diffusers' SD 1.5 / 2.1 checkpoints hold 686 UNet and 248 VAE tensors; CLIPTextModel 16 per layer + 4.
      expect([parts.unet.length, parts.vae.length]).toEqual([686, 248]);
      expect(parts.textEncoder.length).toBe(16 * c.textEncoder.num_hidden_layers + 4);
      const unet = recording(parts.unet);
      unetGraph(unet, c.unet, { batch: 1, height: 8, width: 8 });
      expect([...unet.asked].sort()).toEqual(parts.unet.map((e) => e.name).sort());
      const vae = recording(parts.vae);
      vaeEncodeGraph(vae, c.vae, 64, 64);
      vaeDecodeGraph(vae, c.vae, 1, 64, 64);
      expect([...vae.asked].sort()).toEqual(parts.vae.map((e) => e.name).sort());
      const text = recording(parts.textEncoder);
      textEncoderGraph(text, c.textEncoder, 1);
      expect([...text.asked].sort()).toEqual(parts.textEncoder.map((e) => e.name).sort());
    });
  }

  it("SD 2.x's q/k/v are the three thirds of in_proj's bytes, in that order", () => {
    const entry: TensorEntry = {
      name: "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
      shape: [3072, 1024],
      dtype: "F16",
      offset: 1000,
      length: 3072 * 1024 * 2,
      file: "f",
    };
    const { textEncoder } = ldmToDiffusers(
      [entry],
      { unetLayersPerBlock: 2, vaeLevels: 4, textLayers: 23 },
      "f",
    );
    expect(textEncoder.map((e) => [e.name, e.shape, e.offset, e.length])).toEqual(
      ["q", "k", "v"].map((p, k) => [
        `encoder.layers.0.self_attn.${p}_proj.weight`,
        [1024, 1024],
        1000 + k * 1024 * 1024 * 2,
        1024 * 1024 * 2,
      ]),
    );
  });

  it("SD 2.x keeps 23 of OpenCLIP's 24 layers (the penultimate one conditions) and no text projection", () => {
    const table = sd21();
    const c = inferLdmConfigs(table, "m");
    const { textEncoder } = ldmToDiffusers(
      entriesOf(table),
      { unetLayersPerBlock: 2, vaeLevels: 4, textLayers: c.textEncoder.num_hidden_layers },
      "m",
    );
    expect(textEncoder.some((e) => e.name.startsWith("encoder.layers.23."))).toBe(false);
    expect(textEncoder.some((e) => e.name.startsWith("encoder.layers.22."))).toBe(true);
    expect(textEncoder.some((e) => /projection|logit/.test(e.name))).toBe(false);
  });
});

describe("single-file refusals: one line naming what was found", () => {
  const refusal = (t: Table) => modelFileErrorOf(() => inferLdmConfigs(t, "model.safetensors")).message;

  it("SDXL (its second text encoder under conditioner.embedders)", () => {
    const t = sd15();
    t.set("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", [1280]);
    expect(refusal(t)).toMatch(
      /^model\.safetensors: this is a Stable Diffusion XL checkpoint \(it holds conditioner\.embedders\.1\.model\..*\); the engine supports Stable Diffusion 1\.x and 2\.x only$/,
    );
  });

  it("inpainting: a 9-channel conv_in", () => {
    const t: Table = new Map();
    unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 768, linear: false, inCh: 9 });
    vaeTable(t);
    clipTable(t);
    expect(refusal(t)).toMatch(/this is an inpainting checkpoint \(the UNet takes 9 input channels, not 4\)/);
  });

  it("SD 3 and Flux by their blocks", () => {
    expect(
      refusal(
        new Map([["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", [9216]]]),
      ),
    ).toMatch(/a Stable Diffusion 3 checkpoint/);
    expect(refusal(new Map([["double_blocks.0.img_attn.norm.key_norm.scale", [128]]]))).toMatch(
      /a Flux checkpoint/,
    );
  });

  it("missing parts: no text encoder, no VAE", () => {
    const noText: Table = new Map();
    unetTable(noText, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 768, linear: false });
    vaeTable(noText);
    expect(refusal(noText)).toMatch(
      /holds no text encoder \(neither cond_stage_model\.transformer\.\* of SD 1\.x nor cond_stage_model\.model\.\* of SD 2\.x\)/,
    );
    const noVae = new Map([...sd15()].filter(([n]) => !n.startsWith("first_stage_model.")));
    expect(refusal(noVae)).toMatch(
      /has no tensor first_stage_model\.encoder\.conv_in\.weight \(the VAE's encoder\)/,
    );
  });

  it("an unknown layout: diffusers names, or nothing Stable Diffusion has", () => {
    expect(refusal(new Map([["conv_in.weight", [320, 4, 3, 3]]]))).toMatch(
      /holds diffusers-named weights, not a single-file checkpoint: set MODEL to the diffusers folder/,
    );
    expect(refusal(new Map([["encoder.layer.0.weight", [8]]]))).toMatch(
      /is not a Stable Diffusion checkpoint in the original layout: it has no model\.diffusion_model\.input_blocks\.0\.0\.weight/,
    );
  });

  it("a tensor under a model's prefix that no SD network has", () => {
    const entries = entriesOf(new Map([["model.diffusion_model.input_blocks.1.5.weird.weight", [4]]]));
    const err = modelFileErrorOf(() =>
      ldmToDiffusers(entries, { unetLayersPerBlock: 2, vaeLevels: 4, textLayers: 12 }, "model.safetensors"),
    );
    expect(err.message).toMatch(
      /holds 1 tensor no Stable Diffusion 1\.x\/2\.x network has \(model\.diffusion_model\.input_blocks\.1\.5\.weird\.weight\)/,
    );
  });
});
