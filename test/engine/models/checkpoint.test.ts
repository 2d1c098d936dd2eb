import { cpSync, readFileSync, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { goldenUnetArgs } from "../../../src/cli/bench/golden.js";
import { fp8ToF32 } from "../../../src/engine/graph/dtype.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import {
  checkpointFingerprint,
  findWeightsFile,
  openCheckpoint,
} from "../../../src/engine/models/checkpoint.js";
import {
  parseConfig,
  SchedulerConfigSchema,
  UNetConfigSchema,
  VaeConfigSchema,
} from "../../../src/engine/models/config.js";
import { ModelFileError } from "../../../src/engine/models/errors.js";
import { openSafetensors } from "../../../src/engine/models/safetensors.js";
import type { TensorEntry } from "../../../src/engine/models/tensor-file.js";
import { weightStore } from "../../../src/engine/models/weights.js";
import { configureLogger } from "../../../src/log.js";
import { fixtureDirs, loadGolden } from "../../helpers/golden.js";
import { expectSameTensors, modelFileErrorOf, scratchCopies } from "../../helpers/model-files.js";
import { SD15, SD21 } from "../../helpers/sd-hub-configs.js";
import { captureStderr } from "../../helpers/stderr.js";
import { type TestTensor, writeSafetensors } from "../../helpers/write-safetensors.js";
import { type TorchTestTensor, writeTorchCopy, writeTorchFile } from "../../helpers/write-torch.js";

const copy = scratchCopies("checkpoint-test-");
const SD1 = "test/fixtures/models/sd1/model";

/** A fresh copy of the sd1 fixture checkpoint whose files a test may break. */
const copySd1 = (): string => copy(SD1);

function editJson(file: string, edit: (json: Record<string, unknown>) => void): void {
  const json = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  edit(json);
  writeFileSync(file, JSON.stringify(json));
}

/**
 * Splits safetensors `file` into two shards, the first half of its tensors and the second, each written by
 * `write` under `shardName(1 | 2)`; returns the index's weight map (tensor name → shard file name).
 */
function splitInTwo(
  file: string,
  shardName: (i: number) => string,
  write: (shardFile: string, tensors: Record<string, TestTensor>) => void,
): Record<string, string> {
  const whole = openSafetensors(file);
  const names = [...whole.tensors.keys()];
  const weightMap: Record<string, string> = {};
  [names.slice(0, names.length / 2), names.slice(names.length / 2)].forEach((part, i) => {
    const shardFile = shardName(i + 1);
    const tensors: Record<string, TestTensor> = {};
    for (const name of part) {
      const e = whole.tensors.get(name) as TensorEntry;
      weightMap[name] = shardFile;
      tensors[name] = { dtype: e.dtype, shape: [...e.shape], data: whole.read(name) };
    }
    write(shardFile, tensors);
  });
  return weightMap;
}

const rawUNet = JSON.parse(readFileSync(join(SD1, "unet/config.json"), "utf8")) as Record<string, unknown>;

describe("openCheckpoint on the fixtures", () => {
  it.each(fixtureDirs())(
    "opens %s with every config validated and every component's weights indexed",
    (dir) => {
      const g = loadGolden(dir);
      const ckpt = openCheckpoint(g.modelDir);
      const unet = JSON.parse(readFileSync(join(g.modelDir, "unet/config.json"), "utf8"));
      expect(ckpt.unet.config.attention_head_dim).toEqual(unet.attention_head_dim);
      expect(ckpt.unet.config.use_linear_projection).toBe(unet.use_linear_projection);
      expect(ckpt.unet.config.upcast_attention).toBe(unet.upcast_attention);
      expect(ckpt.unet.config.cross_attention_dim).toBe(ckpt.textEncoder.config.hidden_size);
      expect(ckpt.vae.config.scaling_factor).toBeCloseTo(0.18215, 10);
      expect(ckpt.scheduler).toMatchObject({
        className: "DDIMScheduler",
        config: {
          beta_schedule: "scaled_linear",
          steps_offset: 1,
          set_alpha_to_one: false,
          timestep_spacing: "leading",
        },
      });
      expect(ckpt.scheduler.config.prediction_type).toBe(g.name === "sd2" ? "v_prediction" : "epsilon");
      expect(ckpt.unet.weights.info("conv_in.weight")).toMatchObject({ dtype: "F16", shape: [32, 4, 3, 3] });
      expect(ckpt.textEncoder.weights.names()).toContain("final_layer_norm.weight");
      expect(ckpt.vae.weights.names()).toContain("quant_conv.weight");
      expect(ckpt.tokenizer.encode(g.json.prompts[1] as string).ids).toEqual(g.json.input_ids[1]);
    },
  );
});

describe("config validation", () => {
  it("fills diffusers' defaults for settings an old (SD 1.5-era) config omits", () => {
    const minimal = {
      _class_name: "UNet2DConditionModel",
      _diffusers_version: "0.6.0",
      block_out_channels: [320, 640, 1280, 1280],
      cross_attention_dim: 768,
      sample_size: 64,
    };
    const cfg = parseConfig(UNetConfigSchema, minimal, "unet/config.json");
    expect(cfg).toMatchObject({
      attention_head_dim: 8,
      layers_per_block: 2,
      flip_sin_to_cos: true,
      freq_shift: 0,
      use_linear_projection: false,
      upcast_attention: false,
      norm_eps: 1e-5,
    });
    const sched = parseConfig(
      SchedulerConfigSchema,
      { _class_name: "PNDMScheduler", skip_prk_steps: true },
      "s.json",
    );
    expect(sched).toMatchObject({
      set_alpha_to_one: true,
      steps_offset: 0,
      clip_sample: true,
      prediction_type: "epsilon",
    });
  });

  it("accepts the configs Stable Diffusion 1.5 and 2.1 ship on the hub", () => {
    expect(parseConfig(UNetConfigSchema, SD15.unet, "sd15/unet/config.json")).toMatchObject({
      cross_attention_dim: 768,
    });
    expect(parseConfig(UNetConfigSchema, SD21.unet, "sd21/unet/config.json")).toMatchObject({
      sample_size: 96,
      upcast_attention: true,
    });
    expect(parseConfig(VaeConfigSchema, SD15.vae, "vae/config.json").scaling_factor).toBe(0.18215);
    const pndm = SD15.scheduler;
    // The fixtures' DDIM config differs only in class and bookkeeping: the same schedule follows.
    const fixture = readFileSync(join(SD1, "scheduler/scheduler_config.json"), "utf8");
    const fromPndm = parseConfig(SchedulerConfigSchema, pndm, "scheduler/scheduler_config.json");
    const fromDdim = parseConfig(
      SchedulerConfigSchema,
      JSON.parse(fixture),
      "scheduler/scheduler_config.json",
    );
    for (const key of [
      "beta_start",
      "beta_end",
      "beta_schedule",
      "set_alpha_to_one",
      "steps_offset",
      "timestep_spacing",
      "clip_sample",
      "prediction_type",
    ] as const) {
      expect(fromPndm[key], key).toEqual(fromDdim[key]);
    }
  });

  it("samples as StableDiffusionPipeline does after rewriting outdated configs (steps_offset, clip_sample, sample_size)", () => {
    // StableDiffusionPipeline.__init__ sets steps_offset 1 and clip_sample false on any scheduler config
    // that says otherwise or, as SD 1.x-era ones, omits them (DDIM's defaults are 0 and true), and a UNet
    // sample_size under 64 written by diffusers < 0.9 to 64.
    const dir = copySd1();
    writeFileSync(
      join(dir, "scheduler/scheduler_config.json"),
      JSON.stringify({ _class_name: "LMSDiscreteScheduler", beta_schedule: "scaled_linear" }),
    );
    editJson(join(dir, "unet/config.json"), (j) => {
      j._diffusers_version = "0.8.1";
    });
    const old = openCheckpoint(dir);
    expect(old.scheduler.config).toMatchObject({ steps_offset: 1, clip_sample: false });
    expect(old.unet.config.sample_size).toBe(64);
    editJson(join(dir, "unet/config.json"), (j) => {
      j._diffusers_version = "0.9.0";
    });
    expect(openCheckpoint(dir).unet.config.sample_size).toBe(8);
  });

  it("refuses a prompt length other than SD's 77 tokens instead of computing another function", () => {
    const dir = copySd1();
    editJson(join(dir, "tokenizer/tokenizer_config.json"), (j) => {
      j.model_max_length = 64;
    });
    const e = modelFileErrorOf(() => openCheckpoint(dir));
    expect(e.file).toBe(join(dir, "tokenizer/tokenizer_config.json"));
    expect(e.message).toMatch(
      /prompts are 64 tokens long here \(model_max_length, at most the text encoder's max_position_embeddings 77\); the engine supports the 77 tokens of Stable Diffusion 1\.x and 2\.x only/,
    );
    // A huge model_max_length (some checkpoints declare 1e30) is bounded by the text encoder's positions.
    editJson(join(dir, "tokenizer/tokenizer_config.json"), (j) => {
      j.model_max_length = 1e30;
    });
    expect(openCheckpoint(dir).tokenizer.maxLength).toBe(77);
  });

  it("accepts the optional components StableDiffusionPipeline saves (safety checker, feature extractor, image encoder)", () => {
    const dir = copySd1();
    editJson(join(dir, "model_index.json"), (j) => {
      j.safety_checker = ["stable_diffusion", "StableDiffusionSafetyChecker"];
      j.feature_extractor = ["transformers", "CLIPImageProcessor"];
      j.image_encoder = ["transformers", "CLIPVisionModelWithProjection"];
      j.requires_safety_checker = true;
    });
    expect(openCheckpoint(dir).index.image_encoder).toEqual([
      "transformers",
      "CLIPVisionModelWithProjection",
    ]);
  });

  it("ignores settings diffusers' classes do not take, as diffusers does, and says so in the log", async () => {
    configureLogger({ level: "warn", pretty: false });
    try {
      let parsed: unknown;
      let refused: ModelFileError | undefined;
      const logs = await captureStderr(() => {
        parsed = parseConfig(UNetConfigSchema, { ...rawUNet, fancy_new_option: 3 }, "unet/config.json");
        // Next to a bad value, the bad value is still refused, and named alone.
        refused = modelFileErrorOf(() =>
          parseConfig(UNetConfigSchema, { ...rawUNet, fancy_new_option: 3, act_fn: "gelu" }, "u.json"),
        );
      });
      expect(parsed).toEqual(parseConfig(UNetConfigSchema, rawUNet, "unet/config.json"));
      expect(logs).toMatch(/unet\/config\.json: ignoring setting \\"fancy_new_option\\"/);
      expect(refused?.message).toBe(
        'u.json: setting "act_fn" = "gelu" is not supported (Invalid input: expected "silu")',
      );
    } finally {
      configureLogger({ level: "silent", pretty: false });
    }
    // A whole folder whose model_index, UNet and VAE configs carry settings diffusers would ignore loads.
    const dir = copySd1();
    editJson(join(dir, "model_index.json"), (j) => {
      j.watermarker = [null, null];
    });
    editJson(join(dir, "unet", "config.json"), (j) => {
      j.fancy_new_option = true;
    });
    editJson(join(dir, "vae", "config.json"), (j) => {
      j.fancy_new_option = [1, 2];
    });
    const [edited, plain] = [openCheckpoint(dir), openCheckpoint(SD1)];
    expect([edited.unet.config, edited.vae.config]).toEqual([plain.unet.config, plain.vae.config]);
  });

  it("refuses unsupported values, naming the setting and the value", () => {
    const e = modelFileErrorOf(() =>
      parseConfig(UNetConfigSchema, { ...rawUNet, resnet_time_scale_shift: "scale_shift" }, "u.json"),
    );
    expect(e.message).toMatch(/setting "resnet_time_scale_shift" = "scale_shift" is not supported/);
    const e2 = modelFileErrorOf(() =>
      parseConfig(UNetConfigSchema, { ...rawUNet, attention_head_dim: [8, 8] }, "u.json"),
    );
    expect(e2.message).toMatch(/"attention_head_dim" = \[8,8\] is not supported \(needs one entry per level/);
    // diffusers divides the mid block's resnet outputs by it; the engine does not, so it must refuse it.
    const e5 = modelFileErrorOf(() =>
      parseConfig(UNetConfigSchema, { ...rawUNet, mid_block_scale_factor: 2 }, "u.json"),
    );
    expect(e5.message).toMatch(/setting "mid_block_scale_factor" = 2 is not supported/);
    expect(
      parseConfig(UNetConfigSchema, { ...rawUNet, mid_block_scale_factor: 1.0 }, "u.json"),
    ).toMatchObject({
      mid_block_scale_factor: 1,
    });
    const e4 = modelFileErrorOf(() =>
      parseConfig(UNetConfigSchema, { ...rawUNet, num_attention_heads: 8 }, "u.json"),
    );
    expect(e4.message).toMatch(
      /^u\.json: setting "num_attention_heads" = 8 is not supported \(diffusers refuses it for UNet2DConditionModel/,
    );
    const e3 = modelFileErrorOf(() =>
      parseConfig(SchedulerConfigSchema, { prediction_type: "sample" }, "s.json"),
    );
    expect(e3.message).toMatch(/"prediction_type" = "sample" is not supported/);
  });

  it("names SDXL, SD3 and Flux checkpoints instead of listing their settings", () => {
    const sdxl = modelFileErrorOf(() =>
      parseConfig(UNetConfigSchema, { ...rawUNet, addition_embed_type: "text_time" }, "u.json"),
    );
    expect(sdxl.message).toMatch(/Stable Diffusion XL.*supports Stable Diffusion 1\.x and 2\.x only/);

    const dir = copySd1();
    editJson(join(dir, "model_index.json"), (j) => {
      j._class_name = "StableDiffusionXLPipeline";
      j.text_encoder_2 = ["transformers", "CLIPTextModelWithProjection"];
    });
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toMatch(
      /model_index\.json: this is a Stable Diffusion XL checkpoint \(StableDiffusionXLPipeline\)/,
    );
    editJson(join(dir, "model_index.json"), (j) => {
      j._class_name = "StableDiffusion3Pipeline";
      delete j.text_encoder_2;
      j.transformer = ["diffusers", "SD3Transformer2DModel"];
    });
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toMatch(/Stable Diffusion 3/);
    editJson(join(dir, "model_index.json"), (j) => {
      j._class_name = "FluxPipeline";
      j.transformer = ["diffusers", "FluxTransformer2DModel"];
    });
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toMatch(/this is a Flux checkpoint/);
  });

  it("reads configs as Python's json writes them: bare Infinity, -Infinity and NaN outside strings", () => {
    // What diffusers saves for a DPMSolverMultistepScheduler (lambda_min_clipped defaults to -inf).
    const dir = copySd1();
    editJson(join(dir, "model_index.json"), (j) => {
      j.scheduler = ["diffusers", "DPMSolverMultistepScheduler"];
    });
    writeFileSync(
      join(dir, "scheduler/scheduler_config.json"),
      `{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "lambda_min_clipped": -Infinity,
        "note": "NaN and -Infinity in a \\"string\\" stay text", "sigma_max": Infinity, "sigma_min": NaN,
        "solver_order": 2, "steps_offset": 1, "timestep_spacing": "leading", "variance_type": null}`,
    );
    const { config } = openCheckpoint(dir).scheduler;
    expect(config).toMatchObject({
      beta_schedule: "scaled_linear",
      lambda_min_clipped: Number.NEGATIVE_INFINITY,
      sigma_max: Number.POSITIVE_INFINITY,
      note: 'NaN and -Infinity in a "string" stay text',
    });
    expect(config.sigma_min).toBeNaN();
  });

  it("names the file when a config is missing, is not JSON, or disagrees with another component", () => {
    const dir = copySd1();
    writeFileSync(join(dir, "vae/config.json"), "{ broken");
    const e = modelFileErrorOf(() => openCheckpoint(dir));
    expect(e.file).toBe(join(dir, "vae/config.json"));
    expect(e.message).toMatch(/is not valid JSON/);
    rmSync(join(dir, "vae/config.json"));
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toBe(
      `${join(dir, "vae/config.json")}: file not found`,
    );
    cpSync(join(SD1, "vae/config.json"), join(dir, "vae/config.json"));
    editJson(join(dir, "unet/config.json"), (j) => {
      j.cross_attention_dim = 768;
    });
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toMatch(
      /cross_attention_dim 768 does not match the text encoder's hidden_size 16/,
    );
  });
});

describe("weight files", () => {
  /** The sd1 fixture with its UNet's weights rounded to `format` and stored by `write` (nearest value, ties up). */
  function fp8Unet(
    format: "E4M3" | "E5M2",
    write: (file: string, tensors: Record<string, TorchTestTensor>) => void,
  ) {
    const dir = copySd1();
    const file = join(dir, "unet/diffusion_pytorch_model.safetensors");
    const store = weightStore(openSafetensors(file));
    const codes = Uint8Array.from({ length: 127 }, (_, b) => b); // the positive finite codes, ascending
    const values = fp8ToF32(codes, format).filter(Number.isFinite);
    const nearest = (v: number) => {
      let i = 0;
      while (i + 1 < values.length && (values[i + 1] as number) <= Math.abs(v)) i++;
      const up =
        i + 1 < values.length &&
        (values[i + 1] as number) - Math.abs(v) <= Math.abs(v) - (values[i] as number);
      return (up ? i + 1 : i) | (v < 0 ? 0x80 : 0);
    };
    const tensors: Record<string, TorchTestTensor> = {};
    for (const name of store.names()) {
      const { shape } = store.info(name);
      tensors[name] = {
        dtype: `F8_${format}`,
        shape: [...shape],
        data: Uint8Array.from(store.float32(name), nearest),
      };
    }
    rmSync(file);
    write(dir, tensors);
    return dir;
  }

  it("refuses at load a checkpoint missing a tensor, or holding one of another shape, naming the file and tensor", async () => {
    /** The sd1 fixture with `component`'s weights rewritten by `edit` (name → tensor, as float32). */
    const edited = (component: "unet" | "vae", edit: (t: Record<string, TorchTestTensor>) => void) => {
      const dir = copySd1();
      const file = join(dir, component, "diffusion_pytorch_model.safetensors");
      const store = weightStore(openSafetensors(file));
      const tensors: Record<string, TorchTestTensor> = {};
      for (const n of store.names())
        tensors[n] = {
          dtype: "F32",
          shape: [...store.info(n).shape],
          data: new Uint8Array(store.float32(n).buffer),
        };
      edit(tensors);
      writeSafetensors(file, tensors);
      return { dir, file };
    };
    const refusal = async (dir: string) => {
      const err = await StableDiffusion.load(dir, { device: "cpu", dtype: "fp32" }).then(
        async (sd) => {
          await sd.release();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ModelFileError);
      return err as ModelFileError;
    };
    const attention = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    const noKey = edited("unet", (t) => delete t[attention]);
    const missing = await refusal(noKey.dir);
    expect(missing.file).toBe(noKey.file);
    expect(missing.message).toContain(
      `has no tensor "${attention}", which the UNet its config describes needs`,
    );
    const decoder = "decoder.conv_out.bias";
    const noDecoder = edited("vae", (t) => delete t[decoder]);
    expect(await refusal(noDecoder.dir)).toMatchObject({ file: noDecoder.file });
    expect((await refusal(noDecoder.dir)).message).toContain(`"${decoder}"`);
    const reshaped = edited("unet", (t) => {
      const w = t["conv_in.bias"] as TorchTestTensor;
      t["conv_in.bias"] = { ...w, shape: [w.shape[0] as number, 1] };
    });
    expect((await refusal(reshaped.dir)).message).toMatch(
      /tensor "conv_in\.bias" has shape \[\d+, 1\], expected \[\d+\]/,
    );
  });

  it("loads a UNet stored in fp8 (F8_E4M3, F8_E5M2; safetensors or a torch pickle) as exactly its values in float32", async () => {
    const g = loadGolden("test/fixtures/models/sd1");
    const safetensors = (dir: string, t: Record<string, TorchTestTensor>) =>
      writeSafetensors(join(dir, "unet/diffusion_pytorch_model.safetensors"), t);
    const pickle = (dir: string, t: Record<string, TorchTestTensor>) =>
      writeTorchFile(join(dir, "unet/diffusion_pytorch_model.bin"), t);
    for (const [format, write] of [
      ["E4M3", safetensors],
      ["E5M2", safetensors],
      ["E4M3", pickle],
    ] as const) {
      const dir = fp8Unet(format, write);
      // The same checkpoint with the decoded values written as float32: what the fp8 one must compute.
      const reference = copySd1();
      const decoded = openCheckpoint(dir).unet.weights;
      writeSafetensors(
        join(reference, "unet/diffusion_pytorch_model.safetensors"),
        Object.fromEntries(
          decoded.names().map((n) => {
            const values = decoded.float32(n);
            expect(decoded.info(n).dtype).toBe(`F8_${format}`);
            return [
              n,
              { dtype: "F32", shape: [...decoded.info(n).shape], data: new Uint8Array(values.buffer) },
            ];
          }),
        ),
      );
      const outputs: Float32Array[] = [];
      for (const model of [dir, reference]) {
        const sd = await StableDiffusion.load(model, { device: "cpu", dtype: "fp32" });
        try {
          outputs.push(await sd.predictNoise(...goldenUnetArgs(g)));
        } finally {
          await sd.release();
        }
      }
      const [fp8, f32] = outputs as [Float32Array, Float32Array];
      expect(fp8.every(Number.isFinite)).toBe(true);
      expect(Buffer.compare(Buffer.from(fp8.buffer), Buffer.from(f32.buffer))).toBe(0);
    }
  });

  it("prefers the asked-for variant, falls back to plain files, and refuses pickles diffusers does not load", () => {
    const dir = copySd1();
    const unet = join(dir, "unet");
    cpSync(
      join(unet, "diffusion_pytorch_model.safetensors"),
      join(unet, "diffusion_pytorch_model.fp16.safetensors"),
    );
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "fp16")).toBe(
      join(unet, "diffusion_pytorch_model.fp16.safetensors"),
    );
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(
      join(unet, "diffusion_pytorch_model.safetensors"),
    );
    expect(findWeightsFile(join(dir, "vae"), "diffusion_pytorch_model", "fp16")).toBe(
      join(dir, "vae/diffusion_pytorch_model.safetensors"),
    );
    rmSync(join(unet, "diffusion_pytorch_model.safetensors"));
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(
      join(unet, "diffusion_pytorch_model.fp16.safetensors"),
    );

    const te = join(dir, "text_encoder");
    renameSync(join(te, "model.safetensors"), join(te, "model.ckpt"));
    const e = modelFileErrorOf(() => openCheckpoint(dir));
    expect(e.file).toBe(te);
    expect(e.message).toMatch(
      /holds no weight file diffusers loads for this component \(found model\.ckpt; looked for model\.safetensors.*pytorch_model\.bin/,
    );
    renameSync(join(te, "model.ckpt"), join(te, "pytorch_model.bin"));
    const notTorch = modelFileErrorOf(() => openCheckpoint(dir));
    expect(notTorch.file).toBe(join(te, "pytorch_model.bin"));
    expect(notTorch.message).toMatch(/is not a torch\.save file \(it does not start with a zip header\)/);
    rmSync(join(te, "pytorch_model.bin"));
    expect(modelFileErrorOf(() => openCheckpoint(dir)).message).toMatch(
      /no weight file found \(looked for model\.safetensors/,
    );
  });

  it("takes .bin pickles in diffusers' order: after every safetensors, the variant's first", () => {
    const dir = copySd1();
    const unet = join(dir, "unet");
    const bin = (name: string) => writeFileSync(join(unet, name), "");
    bin("diffusion_pytorch_model.bin");
    bin("diffusion_pytorch_model.fp16.bin");
    // Any safetensors, even another variant's, comes before a pickle.
    renameSync(
      join(unet, "diffusion_pytorch_model.safetensors"),
      join(unet, "diffusion_pytorch_model.bf16.safetensors"),
    );
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "fp16")).toBe(
      join(unet, "diffusion_pytorch_model.bf16.safetensors"),
    );
    rmSync(join(unet, "diffusion_pytorch_model.bf16.safetensors"));
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "fp16")).toBe(
      join(unet, "diffusion_pytorch_model.fp16.bin"),
    );
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(join(unet, "diffusion_pytorch_model.bin"));
    rmSync(join(unet, "diffusion_pytorch_model.bin"));
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(
      join(unet, "diffusion_pytorch_model.fp16.bin"),
    );
    bin("diffusion_pytorch_model.bin.index.fp16.json");
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "fp16")).toBe(
      join(unet, "diffusion_pytorch_model.fp16.bin"),
    );
    rmSync(join(unet, "diffusion_pytorch_model.fp16.bin"));
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "fp16")).toBe(
      join(unet, "diffusion_pytorch_model.bin.index.fp16.json"),
    );
    // transformers names its pickles pytorch_model*.bin, not model*.bin.
    const te = join(dir, "text_encoder");
    rmSync(join(te, "model.safetensors"));
    writeFileSync(join(te, "pytorch_model.bin.index.json"), "");
    expect(findWeightsFile(te, "model")).toBe(join(te, "pytorch_model.bin.index.json"));
  });

  it("falls back to another variant's sharded index as to its single file, after the plain weights", () => {
    const dir = copySd1();
    const unet = join(dir, "unet");
    writeFileSync(join(unet, "diffusion_pytorch_model.safetensors.index.fp16.json"), "{}");
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(
      join(unet, "diffusion_pytorch_model.safetensors"),
    );
    rmSync(join(unet, "diffusion_pytorch_model.safetensors"));
    expect(findWeightsFile(unet, "diffusion_pytorch_model")).toBe(
      join(unet, "diffusion_pytorch_model.safetensors.index.fp16.json"),
    );
    expect(findWeightsFile(unet, "diffusion_pytorch_model", "bf16")).toBe(
      join(unet, "diffusion_pytorch_model.safetensors.index.fp16.json"),
    );
  });

  it("opens a variant's sharded index (`*.safetensors.index.fp16.json`, `*.bin.index.fp16.json`)", () => {
    const dir = copySd1();
    /** Splits a component's weights into two shards named as diffusers and transformers name a variant's. */
    const shard = (component: string, stem: string, ext: "safetensors" | "bin") => {
      const file = join(
        dir,
        component,
        component === "text_encoder" ? "model.safetensors" : `${stem}.safetensors`,
      );
      const weightMap = splitInTwo(
        file,
        (i) => `${stem}.fp16-0000${i}-of-00002.${ext}`,
        (shardFile, tensors) => {
          const target = join(dir, component, shardFile);
          writeSafetensors(ext === "bin" ? `${target}.safetensors` : target, tensors);
          if (ext === "bin") writeTorchCopy(`${target}.safetensors`, target);
        },
      );
      rmSync(file);
      const index = join(dir, component, `${stem}.${ext}.index.fp16.json`);
      writeFileSync(index, JSON.stringify({ metadata: {}, weight_map: weightMap }));
      return index;
    };
    const vaeIndex = shard("vae", "diffusion_pytorch_model", "safetensors");
    const teIndex = shard("text_encoder", "pytorch_model", "bin");
    const ckpt = openCheckpoint(dir, { variant: "fp16" });
    const reference = openCheckpoint(SD1);
    expect([ckpt.vae.weightsFile, ckpt.textEncoder.weightsFile]).toEqual([vaeIndex, teIndex]);
    expectSameTensors("vae", ckpt.vae.weights, reference.vae.weights);
    expectSameTensors("text encoder", ckpt.textEncoder.weights, reference.textEncoder.weights);
  });

  it("reads text encoders saved with transformers' `text_model.` prefix under the same names", () => {
    const dir = copySd1();
    const file = join(dir, "text_encoder/model.safetensors");
    const st = openSafetensors(file);
    const tensors = Object.fromEntries(
      [...st.tensors.values()].map((e) => [
        `text_model.${e.name}`,
        { dtype: e.dtype, shape: [...e.shape], data: st.read(e.name) },
      ]),
    );
    const expected = Array.from(st.readFloat32("final_layer_norm.weight"));
    const names = [...st.tensors.keys()].sort();
    writeSafetensors(file, tensors);
    const te = openCheckpoint(dir).textEncoder.weights;
    expect(te.names().sort()).toEqual(names);
    expect(te.info("final_layer_norm.weight")).toMatchObject({
      name: "final_layer_norm.weight",
      shape: [16],
    });
    expect(Array.from(te.float32("final_layer_norm.weight"))).toEqual(expected);
  });

  it("names the truncated weight file when opening the checkpoint", () => {
    const dir = copySd1();
    const file = join(dir, "vae/diffusion_pytorch_model.safetensors");
    writeFileSync(file, readFileSync(file).subarray(0, 100_000));
    const e = modelFileErrorOf(() => openCheckpoint(dir));
    expect(e.file).toBe(file);
    expect(e.message).toMatch(/truncated file/);
  });
});

describe("checkpointFingerprint (the graph cache's stand-in for the weights)", () => {
  it("changes when any shard of a sharded component changes, not only its index", () => {
    const dir = copySd1();
    const vae = join(dir, "vae");
    const weightMap = splitInTwo(
      join(vae, "diffusion_pytorch_model.safetensors"),
      (i) => `diffusion_pytorch_model-0000${i}-of-00002.safetensors`,
      (file, tensors) => writeSafetensors(join(vae, file), tensors),
    );
    rmSync(join(vae, "diffusion_pytorch_model.safetensors"));
    writeFileSync(
      join(vae, "diffusion_pytorch_model.safetensors.index.json"),
      JSON.stringify({ weight_map: weightMap }),
    );
    const before = checkpointFingerprint(openCheckpoint(dir));
    expect(checkpointFingerprint(openCheckpoint(dir))).toBe(before);
    // A re-downloaded second shard: same index, same size, a new modification time.
    const later = new Date(Date.now() + 60_000);
    utimesSync(join(vae, "diffusion_pytorch_model-00002-of-00002.safetensors"), later, later);
    expect(checkpointFingerprint(openCheckpoint(dir))).not.toBe(before);
  });
});
