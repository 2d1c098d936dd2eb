/**
 * Config inference for single-file checkpoints from tensor names and shapes alone, on tables shaped like
 * the real SD 1.5 (`v1-5-pruned-emaonly.safetensors`) and SD 2.1 (`v2-1_768-ema-pruned.safetensors`)
 * files (test/helpers/ldm-tables.ts), no data: inference needs none. The expected configs are the hub repositories' config.json files, which diffusers loads for such
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
import { clipTable, sd15, sd21, type Table, unetTable, vaeTable } from "../../helpers/ldm-tables.js";
import { modelFileErrorOf } from "../../helpers/model-files.js";
import { SD15, SD21 } from "../../helpers/sd-hub-configs.js";

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

  it("SD 2.x written from a diffusers folder (23 layers, no text projection) keeps all 23, as diffusers runs them", () => {
    // scripts/convert_diffusers_to_original_stable_diffusion.py's output: the diffusers text encoder's
    // layers under OpenCLIP's names, without the layer and the projection the folder never had.
    const converted = new Map(
      [...sd21()].filter(
        ([n]) =>
          !/^cond_stage_model\.model\.(transformer\.resblocks\.23\.|text_projection|logit_scale)/.test(n),
      ),
    );
    const c = inferLdmConfigs(converted, "m");
    expect(textSettings(c.textEncoder)).toEqual(textSettings(inferLdmConfigs(sd21(), "m").textEncoder));
    expect(c.textEncoder.num_hidden_layers).toBe(SD21.textEncoder.num_hidden_layers);
    const { textEncoder } = ldmToDiffusers(
      entriesOf(converted),
      { unetLayersPerBlock: 2, vaeLevels: 4, textLayers: c.textEncoder.num_hidden_layers },
      "m",
    );
    expect(textEncoder.length).toBe(16 * 23 + 4);
  });

  it("SD 2.x whose OpenCLIP tower was re-saved under transformers' names is SD 2.x, as diffusers tells by its width", () => {
    // The 2-1 repo's text encoder (23 layers) under cond_stage_model.transformer.text_model.
    const resaved = new Map([...sd21()].filter(([n]) => !n.startsWith("cond_stage_model.")));
    clipTable(resaved, { width: 1024, layers: 23, mlp: 4096 });
    const c = inferLdmConfigs(resaved, "m");
    const want = inferLdmConfigs(sd21(), "m");
    expect([c.family, c.padToken, c.scheduler]).toEqual([want.family, want.padToken, want.scheduler]);
    expect([c.unet, c.vae]).toEqual([want.unet, want.vae]);
    expect(textSettings(c.textEncoder)).toEqual(textSettings(want.textEncoder));
  });

  it("a VAE baked in with its training file's loss and EMA state gives the same VAE: diffusers ignores them", () => {
    const layout = { unetLayersPerBlock: 2, vaeLevels: 4, textLayers: 12 };
    const baked = sd15();
    // vae-ft-mse-840000-ema-pruned.ckpt's keys outside the autoencoder, copied under first_stage_model.
    baked.set("first_stage_model.loss.logvar", []);
    baked.set("first_stage_model.loss.discriminator.main.0.weight", [64, 3, 4, 4]);
    baked.set("first_stage_model.loss.perceptual_loss.net.slice1.0.weight", [64, 3, 3, 3]);
    baked.set("first_stage_model.model_ema.decay", []);
    expect(ldmToDiffusers(entriesOf(baked), layout, "m")).toEqual(
      ldmToDiffusers(entriesOf(sd15()), layout, "m"),
    );
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

  it("a text encoder whose width is no multiple of CLIP's 64-channel heads", () => {
    const t: Table = new Map();
    unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 16, linear: false });
    vaeTable(t);
    clipTable(t, { width: 16, layers: 3, mlp: 37 });
    expect(refusal(t)).toBe(
      "model.safetensors: its text encoder's width of 16 channels cannot hold CLIP's heads of 64; give its configs with MODEL_CONFIG",
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
