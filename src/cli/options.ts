// Flags that several CLI commands share, spelled once so their choices and help stay alike.
import { Option } from "commander";
import type { Config } from "../config.js";
import { parseSize } from "../spec/shape.js";

export type DeviceFlag = Config["engineDevice"];
export type DtypeFlag = Config["engineDtype"];
export type TrainDtypeFlag = Config["engineTrainDtype"];

const DEVICES = ["auto", "cpu", "webgpu", "cuda"] satisfies DeviceFlag[];
const TRAIN_DTYPES = ["auto", "fp32", "fp16"] satisfies TrainDtypeFlag[];

/** `--device`: the execution provider, overriding ENGINE_DEVICE. */
export function deviceOption(): Option {
  return new Option("--device <device>", "execution provider (default: ENGINE_DEVICE)").choices(DEVICES);
}

/** A benchmark's `--device`: the execution provider it measures, `auto` unless named. */
export function benchDeviceOption(): Option {
  return new Option("--device <device>", "execution provider").choices(DEVICES).default("auto");
}

/** `--dtype`: the UNet's compute dtype, overriding ENGINE_DTYPE. */
export function dtypeOption(): Option {
  return new Option("--dtype <dtype>", "UNet compute dtype (default: ENGINE_DTYPE)").choices([
    "auto",
    "fp32",
    "fp16",
  ] satisfies DtypeFlag[]);
}

/**
 * `--train-dtype`: the compute dtype of the training graphs (fp16: mixed precision, loss and gradients
 * fp32), overriding ENGINE_TRAIN_DTYPE.
 */
export function trainDtypeOption(what = "training"): Option {
  return new Option(
    "--train-dtype <dtype>",
    `compute dtype of ${what} (fp16: mixed precision, loss and gradients fp32; auto: fp16 on cuda; default: ENGINE_TRAIN_DTYPE)`,
  ).choices(TRAIN_DTYPES);
}

/** A benchmark's `--train-dtype`: fp32 unless named, so that a run measures what its command line says. */
export function benchTrainDtypeOption(): Option {
  return new Option(
    "--train-dtype <dtype>",
    "compute dtype of the training graphs (mixed precision: fp16; auto: fp16 on cuda)",
  )
    .choices(TRAIN_DTYPES)
    .default("fp32");
}

/**
 * `--size`: a forced working size of `photo` (src/spec/shape.ts), parsed into a Size and checked against
 * the limits before anything starts.
 */
export function sizeOption(photo = "the photo"): Option {
  return new Option(
    "--size <size>",
    `force a working size: a side ("512") or width×height ("768x512"); ${photo} covers it, centre-cropped (default: ${photo}'s aspect ratio at the model's pixel count, 512² for SD 1.5)`,
  ).argParser((v: string) => parseSize(v, "--size"));
}
