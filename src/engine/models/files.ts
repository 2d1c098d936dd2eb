import { readFileSync } from "node:fs";
import { ModelFileError } from "./errors.js";

/** A checkpoint's text file (config, vocabulary, merges), or a ModelFileError naming it. */
export function readModelText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ModelFileError(
      file,
      code === "ENOENT" ? "file not found" : `cannot be read (${code ?? String(err)})`,
    );
  }
}

/** Stands for NaN until the reviver puts the number back (JSON has no literal for it). */
const NAN = "\u0000NaN";

/**
 * JSON as Python's json module writes it, which is how every diffusers and transformers config is saved:
 * float("inf") and float("nan") come out as the bare words `Infinity`, `-Infinity` and `NaN`, which
 * JSON.parse refuses (diffusers' DPMSolverMultistepScheduler saves `"lambda_min_clipped": -Infinity` by
 * default). Outside strings those words can be nothing else, so they are read as the numbers Python meant:
 * ±Infinity as the overflowing literals ±1e999, NaN through a reviver.
 */
function parsePythonJson(text: string): unknown {
  let out = "";
  let start = 0;
  let sawNaN = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      // Skip the string, escapes included.
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
      continue;
    }
    const word = text.startsWith("Infinity", i) ? "Infinity" : text.startsWith("NaN", i) ? "NaN" : undefined;
    if (word === undefined) continue;
    out += text.slice(start, i) + (word === "NaN" ? JSON.stringify(NAN) : "1e999");
    sawNaN ||= word === "NaN";
    i += word.length - 1;
    start = i + 1;
  }
  out += text.slice(start);
  return sawNaN ? JSON.parse(out, (_key, value) => (value === NAN ? Number.NaN : value)) : JSON.parse(out);
}

/** A checkpoint's JSON file, parsed, or a ModelFileError naming it. */
export function readModelJson(file: string): unknown {
  const text = readModelText(file);
  try {
    return JSON.parse(text);
  } catch (err) {
    try {
      return parsePythonJson(text);
    } catch {
      throw new ModelFileError(file, `is not valid JSON (${(err as Error).message})`);
    }
  }
}
