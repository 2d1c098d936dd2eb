import { join } from "node:path";
import type { Config } from "../config.js";
import type { LoadOptions } from "./index.js";

export type ModelSettings = Pick<
  Config,
  "modelCacheDir" | "hfEndpoint" | "hfToken" | "engineDevice" | "engineDtype"
> &
  Partial<Pick<Config, "engineMaxTrainBytes">>;

/**
 * `StableDiffusion.load` options from the app's settings, in one place so that the engine worker and
 * the CLI's edits load a model alike. Compiled graphs are cached beside the downloaded weights, so a
 * restarted engine skips graph building and weight conversion.
 */
export function modelLoadOptions(settings: ModelSettings): LoadOptions {
  return {
    device: settings.engineDevice,
    dtype: settings.engineDtype,
    maxTrainBytes: settings.engineMaxTrainBytes,
    cacheDir: settings.modelCacheDir,
    endpoint: settings.hfEndpoint,
    token: settings.hfToken?.reveal(),
    graphCacheDir: join(settings.modelCacheDir, ".graphs"),
  };
}
