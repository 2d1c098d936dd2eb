/**
 * The training graphs' compute dtype: ENGINE_TRAIN_DTYPE reaches `StableDiffusion.load` through
 * `modelLoadOptions` (what the engine worker and the CLI's edits load with), and a setting resolves per
 * provider — a pure function, so the CUDA and WebGPU rows run without a GPU.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { StableDiffusion, trainComputeDtype } from "../../src/engine/index.js";
import { modelLoadOptions } from "../../src/engine/load-options.js";
import { configuredModelIdentity } from "../../src/spec/model.js";
import { scratchCopies } from "../helpers/model-files.js";

const MODEL = "test/fixtures/models/sd1/model";
const scratch = scratchCopies("load-options-");
const config = (env: Record<string, string>) => loadConfig(env, { envFile: false, isTTY: false });

describe("trainComputeDtype", () => {
  it.each([
    ["auto", "cuda", "float16"],
    ["auto", "webgpu", "float32"],
    ["auto", "cpu", "float32"],
    ["fp16", "cuda", "float16"],
    ["fp16", "webgpu", "float16"],
    ["fp16", "cpu", "float16"],
    ["fp32", "cuda", "float32"],
    ["fp32", "webgpu", "float32"],
    ["fp32", "cpu", "float32"],
  ] as const)("%s on %s computes in %s", (setting, device, expected) => {
    expect(trainComputeDtype(setting, device)).toBe(expected);
  });
});

describe("modelLoadOptions", () => {
  it("passes ENGINE_TRAIN_DTYPE (auto unless set) beside ENGINE_DEVICE and ENGINE_DTYPE", () => {
    expect(modelLoadOptions(config({}))).toMatchObject({ device: "auto", dtype: "auto", trainDtype: "auto" });
    expect(
      modelLoadOptions(config({ ENGINE_DEVICE: "cpu", ENGINE_DTYPE: "fp32", ENGINE_TRAIN_DTYPE: "fp16" })),
    ).toMatchObject({ device: "cpu", dtype: "fp32", trainDtype: "fp16" });
  });
});

describe("StableDiffusion.load's trainDtype", () => {
  it.each([
    [{}, "float32"], // the engine's own default: fp32 unless asked
    [{ trainDtype: "auto" }, "float32"], // auto on the CPU, which has no fp16 arithmetic
    [{ trainDtype: "fp16" }, "float16"],
  ] as const)("%o on the CPU trains in %s, and pipelines' graph builders get it", async (opts, expected) => {
    const sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32", ...opts });
    try {
      expect(sd.trainDtype).toBe(expected);
      // The builder throws once it has seen its parts, so no graph is built or compiled.
      let seen: string | undefined;
      await expect(
        sd.compile(`train-dtype-probe:${expected}`, ({ trainDtype }) => {
          seen = trainDtype;
          throw new Error("probe only");
        }),
      ).rejects.toThrow("probe only");
      expect(seen).toBe(expected);
    } finally {
      await sd.close();
    }
  });
});

describe("MODEL_CONFIG and MODEL_PREDICTION_TYPE", () => {
  it("reach StableDiffusion.load through modelLoadOptions (auto: no override)", () => {
    expect(modelLoadOptions(config({}))).toMatchObject({ modelConfig: undefined, predictionType: undefined });
    expect(
      modelLoadOptions(config({ MODEL_CONFIG: "/models/sd15", MODEL_PREDICTION_TYPE: "epsilon" })),
    ).toMatchObject({ modelConfig: "/models/sd15", predictionType: "epsilon" });
    expect(() => config({ MODEL_PREDICTION_TYPE: "sample" })).toThrow(/MODEL_PREDICTION_TYPE/);
  });

  it("the override replaces the scheduler config's prediction type, and is validated with it", async () => {
    const sd = await StableDiffusion.load(MODEL, { device: "cpu", predictionType: "v_prediction" });
    try {
      expect(sd.predictionType).toBe("v_prediction");
      expect(sd.scheduler().config.prediction_type).toBe("v_prediction");
    } finally {
      await sd.close();
    }
    const dir = scratch("test/fixtures/models/sd2/model");
    const file = join(dir, "scheduler", "scheduler_config.json");
    const scheduler = JSON.parse(readFileSync(file, "utf8"));
    writeFileSync(
      file,
      JSON.stringify({ ...scheduler, rescale_betas_zero_snr: true, timestep_spacing: "trailing" }),
    );
    await expect(StableDiffusion.load(dir, { device: "cpu", predictionType: "epsilon" })).rejects.toThrow(
      /the scheduler config with MODEL_PREDICTION_TYPE=epsilon: setting "rescale_betas_zero_snr" = true is not supported \(zero terminal SNR with epsilon prediction/,
    );
  });
});

describe("the model's identity (concept cache, concept files, Imagic states)", () => {
  it("is MODEL alone at the default settings, so concepts saved before keep matching", () => {
    expect(configuredModelIdentity(config({ MODEL }))).toBe(MODEL);
    expect(configuredModelIdentity(config({ MODEL, MODEL_REVISION: "main" }))).toBe(MODEL);
  });

  it("names a revision, a MODEL_CONFIG and a prediction override, which change what one MODEL computes", () => {
    expect(configuredModelIdentity(config({ MODEL: "owner/sd", MODEL_REVISION: "v2" }))).toBe("owner/sd@v2");
    expect(
      configuredModelIdentity(
        config({ MODEL: "m.safetensors", MODEL_CONFIG: "/cfg", MODEL_PREDICTION_TYPE: "epsilon" }),
      ),
    ).toBe("m.safetensors (config /cfg, prediction epsilon)");
  });

  it("is what the engine loaded from the same settings reports, which the bot's cache lookups use", async () => {
    const settings = config({ MODEL, MODEL_PREDICTION_TYPE: "v_prediction", ENGINE_DEVICE: "cpu" });
    const sd = await StableDiffusion.load(MODEL, modelLoadOptions(settings));
    try {
      expect(sd.modelId).toBe(configuredModelIdentity(settings));
      expect(sd.modelId).not.toBe(configuredModelIdentity(config({ MODEL })));
    } finally {
      await sd.close();
    }
  });
});
