// Flags that several CLI commands share, spelled once so their choices and help stay alike.
import { Option } from "commander";
import type { Config } from "../config.js";

export type DeviceFlag = Config["engineDevice"];
export type DtypeFlag = Config["engineDtype"];

/** `--device`: the execution provider, overriding ENGINE_DEVICE. */
export function deviceOption(): Option {
  return new Option("--device <device>", "execution provider (default: ENGINE_DEVICE)").choices([
    "auto",
    "cpu",
    "webgpu",
    "cuda",
  ] satisfies DeviceFlag[]);
}

/** `--dtype`: the UNet's compute dtype, overriding ENGINE_DTYPE. */
export function dtypeOption(): Option {
  return new Option("--dtype <dtype>", "UNet compute dtype (default: ENGINE_DTYPE)").choices([
    "auto",
    "fp32",
    "fp16",
  ] satisfies DtypeFlag[]);
}

/** `--train-dtype`: the compute dtype of the training graphs (fp16: mixed precision, loss and gradients fp32). */
export function trainDtypeOption(what = "training"): Option {
  return new Option(
    "--train-dtype <dtype>",
    `compute dtype of ${what} (fp16: mixed precision, loss and gradients fp32)`,
  )
    .choices(["fp32", "fp16"])
    .default("fp32");
}
