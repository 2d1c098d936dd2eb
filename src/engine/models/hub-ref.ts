/**
 * What a MODEL string names on the Hugging Face hub, read without any network code (the engine loads
 * hub.ts only when there is something to download): a repository id (`owner/name`), or one file of a
 * repository as diffusers' `from_single_file` takes it —
 *
 *   https://huggingface.co/{owner}/{name}/blob/{revision}/{path}   (or /resolve/, hf.co, HF_ENDPOINT's host)
 *   {owner}/{name}/{path}.safetensors                             (the short form; MODEL_REVISION applies)
 */
import { isSingleFile } from "./single-file.js";

/** One file of a hub repository. */
export interface HubFileRef {
  id: string;
  /** The file's path in the repository. */
  path: string;
  /** The revision a URL names; undefined for the short form. */
  revision?: string;
}

const MODEL_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** The hosts of the public hub's file URLs, beside HF_ENDPOINT's. */
const HUB_HOSTS = new Set(["huggingface.co", "hf.co"]);

export function isModelId(value: string): boolean {
  return MODEL_ID.test(value) && !value.includes("..");
}

/**
 * The hub file a MODEL string names, or undefined when it names none (a local path, a repository id).
 * A URL of the hub is taken whatever its file (hub.ts refuses what is no checkpoint, with a reason);
 * the short form only with a checkpoint's extension, so that a repository id stays one.
 */
export function parseHubFile(model: string, endpoint = "https://huggingface.co"): HubFileRef | undefined {
  if (/^https?:\/\//i.test(model)) {
    let url: URL;
    try {
      url = new URL(model);
    } catch {
      return undefined;
    }
    if (!HUB_HOSTS.has(url.hostname) && url.host !== new URL(endpoint).host) return undefined;
    const m = /^\/([^/]+\/[^/]+)\/(?:blob|resolve)\/([^/]+)\/(.+)$/.exec(url.pathname);
    const [id, revision, path] = [m?.[1] ?? "", m?.[2] ?? "", m?.[3] ?? ""].map(decodeURIComponent);
    if (!id || !isModelId(id) || !revision || !path || !safePath(path)) return undefined;
    return { id, revision, path };
  }
  const m = /^([^/]+\/[^/]+)\/(.+)$/.exec(model);
  const [id, path] = [m?.[1] ?? "", m?.[2] ?? ""];
  if (!isModelId(id) || !safePath(path) || !isSingleFile(path)) return undefined;
  return { id, path };
}

function safePath(path: string): boolean {
  return path.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}
