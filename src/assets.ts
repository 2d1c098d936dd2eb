/**
 * Data files shipped with the package (assets/). Their paths are taken from this module, one level below
 * the package root in src/ (tsx), dist/ (tsc) and dist-gpu/ (the esbuild bundle) alike.
 */
import { fileURLToPath } from "node:url";

/** CLIP's BPE vocabulary (vocab.json + merges.txt), which SD 1.x and 2.x share: a single-file checkpoint has no tokenizer. */
export const CLIP_TOKENIZER_DIR = fileURLToPath(new URL("../assets/clip-tokenizer", import.meta.url));
