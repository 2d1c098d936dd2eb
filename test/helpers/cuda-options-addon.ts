// For tests of the CUDA options add-on on this machine's onnxruntime (no CUDA provider).
import { symlinkSync } from "node:fs";
import { join } from "node:path";
import { onnxruntimeNode } from "../../src/engine/runtime/cuda.js";
import { buildCudaOptionsAddon } from "../../src/engine/runtime/cuda-options.js";

/**
 * A stand-in for the binding's folder: the add-on built into `dir` beside (a link to) the very libonnxruntime
 * the binding uses, which is what configureCudaProvider loads from it.
 */
export async function addonBesideOnnxruntime(dir: string): Promise<string> {
  const { bindingDir } = onnxruntimeNode();
  await buildCudaOptionsAddon(dir);
  symlinkSync(join(bindingDir, "libonnxruntime.so.1"), join(dir, "libonnxruntime.so.1"));
  return dir;
}
