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

/** A checkpoint's JSON file, parsed, or a ModelFileError naming it. */
export function readModelJson(file: string): unknown {
  const text = readModelText(file);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ModelFileError(file, `is not valid JSON (${(err as Error).message})`);
  }
}
