/**
 * MODEL (and MODEL_CONFIG) to a Checkpoint: a local diffusers folder or single file is opened as is; a
 * hub model id, a hub single file (a URL of the hub or owner/name/path.safetensors) and a hub
 * MODEL_CONFIG are first found in the Hugging Face cache or downloaded into it by hub.ts, which is
 * loaded only then: a local model needs no network code.
 */
import { existsSync } from "node:fs";
import { UserFacingError } from "../errors.js";
import type { LoadOptions } from "./index.js";
import { type Checkpoint, openCheckpoint } from "./models/checkpoint.js";
import type { ResolvedModel, ResolveOptions } from "./models/hub.js";
import { isModelId, parseHubFile } from "./models/hub-ref.js";
import { isSingleFile, openSingleFile } from "./models/single-file.js";

export interface OpenedModel {
  checkpoint: Checkpoint;
  /** Lets go of the hub snapshots held (their cleanup waits while we hold them). */
  release(): Promise<void>;
}

/** `variant`: the weight variant to open (MODEL_VARIANT resolved); `setting`: MODEL_VARIANT as given. */
export async function openModel(
  pathOrId: string,
  opts: LoadOptions,
  variant: string | undefined,
  setting: string,
): Promise<OpenedModel> {
  const local = existsSync(pathOrId);
  const hubFile = local ? undefined : parseHubFile(pathOrId, opts.endpoint);
  const singleFile = hubFile !== undefined || isSingleFile(pathOrId);
  if (opts.modelConfig && !singleFile) {
    throw new UserFacingError(
      `MODEL_CONFIG is set but MODEL (${pathOrId}) is not a single-file checkpoint (.safetensors, .ckpt): a diffusers folder or hub id brings its own configs`,
    );
  }
  const configLocal = opts.modelConfig === undefined || existsSync(opts.modelConfig);
  if (opts.modelConfig && !configLocal && !isModelId(opts.modelConfig)) {
    throw new UserFacingError(
      `MODEL_CONFIG ${opts.modelConfig} is neither a folder nor a hub model id like "owner/name": give a diffusers model folder (model_index.json, the component configs and the tokenizer) or the id of a diffusers repository on the hub (only its configs and tokenizer are downloaded)`,
    );
  }
  const hub = () => import("./models/hub.js");
  const hubOptions: ResolveOptions = {
    cacheDir: opts.cacheDir ?? ".state/models",
    endpoint: opts.endpoint,
    token: opts.token,
    revision: opts.revision,
    variant,
    variantRequired: setting !== "auto" && setting !== "none",
    offline: opts.offline,
    proxy: opts.proxy,
    signal: opts.signal,
    onProgress: opts.onProgress,
  };
  const held: ResolvedModel[] = [];
  const hold = async (resolving: Promise<ResolvedModel>): Promise<string> => {
    const model = await resolving;
    held.push(model);
    return model.folder;
  };
  const release = async () => {
    for (const model of held) await model.release();
  };
  try {
    const configDir =
      opts.modelConfig && !configLocal
        ? await hold((await hub()).resolveConfigs(opts.modelConfig, hubOptions))
        : opts.modelConfig;
    if (hubFile) {
      const file = await hold((await hub()).resolveHubFile(hubFile, hubOptions));
      return { checkpoint: openSingleFile(file, { configDir }), release };
    }
    if (singleFile) return { checkpoint: openSingleFile(pathOrId, { configDir }), release };
    const folder = local ? pathOrId : await hold((await hub()).resolveModel(pathOrId, hubOptions));
    return { checkpoint: openCheckpoint(folder, { variant }), release };
  } catch (err) {
    await release();
    throw err;
  }
}
