import { join } from "node:path";
import type { Config } from "../config.js";
import type { LoadOptions } from "./index.js";

export type ModelSettings = Pick<
  Config,
  | "stateDir"
  | "modelCacheDir"
  | "modelRevision"
  | "modelVariant"
  | "modelConfig"
  | "modelPredictionType"
  | "hfEndpoint"
  | "hfToken"
  | "hfHubOffline"
  | "httpsProxy"
  | "httpProxy"
  | "noProxy"
  | "engineDevice"
  | "engineDtype"
  | "engineTrainDtype"
> &
  Partial<Pick<Config, "engineCudaOptions" | "engineTrainingSessions">> &
  Partial<Pick<Config, "engineMaxTrainBytes">>;

/**
 * `StableDiffusion.load` options from the app's settings, in one place so that the engine worker and
 * the CLI's edits load a model alike. Compiled graphs are cached under STATE_DIR/graphs (not in the
 * Hugging Face cache, which holds only hub repositories), so a restarted engine skips graph building
 * and weight conversion.
 */
export function modelLoadOptions(settings: ModelSettings): LoadOptions {
  return {
    device: settings.engineDevice,
    dtype: settings.engineDtype,
    trainDtype: settings.engineTrainDtype,
    maxTrainBytes: settings.engineMaxTrainBytes,
    cudaOptions: settings.engineCudaOptions,
    trainingSessions: settings.engineTrainingSessions,
    cacheDir: settings.modelCacheDir,
    endpoint: settings.hfEndpoint,
    token: settings.hfToken?.reveal(),
    revision: settings.modelRevision,
    variant: settings.modelVariant,
    modelConfig: settings.modelConfig,
    predictionType: settings.modelPredictionType === "auto" ? undefined : settings.modelPredictionType,
    offline: settings.hfHubOffline,
    proxy: { httpsProxy: settings.httpsProxy, httpProxy: settings.httpProxy, noProxy: settings.noProxy },
    graphCacheDir: join(settings.stateDir, "graphs"),
  };
}
