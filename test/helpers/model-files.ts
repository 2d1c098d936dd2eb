// For tests of how checkpoint files are read: breakable copies of the fixtures, and the error they give.
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect } from "vitest";
import { ModelFileError } from "../../src/engine/models/errors.js";
import type { WeightStore } from "../../src/engine/models/weights.js";

/**
 * Call at a test file's top level: returns a maker of fresh copies of a fixture folder that a test may
 * break, all under one temp folder (named `prefix…`) removed after the file.
 */
export function scratchCopies(prefix: string): (source: string) => string {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  return (source) => {
    const dir = mkdtempSync(join(tmp, "copy-"));
    cpSync(source, dir, { recursive: true });
    return dir;
  };
}

/** The ModelFileError that `fn` throws; the test fails if it throws anything else, or nothing. */
export function modelFileErrorOf(fn: () => unknown): ModelFileError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ModelFileError);
    return err as ModelFileError;
  }
  throw new Error("expected an error");
}

/** The same tensor names, and for each the same dtype, shape and bytes. */
export function expectSameTensors(what: string, ours: WeightStore, folder: WeightStore): void {
  expect(ours.names().sort(), `${what}: names`).toEqual(folder.names().sort());
  for (const name of folder.names()) {
    const a = ours.info(name);
    const b = folder.info(name);
    expect([a.dtype, a.shape], `${what} ${name}`).toEqual([b.dtype, b.shape]);
    expect(
      Buffer.from(ours.data(name).bytes()).equals(Buffer.from(folder.data(name).bytes())),
      `${what} ${name}: bytes`,
    ).toBe(true);
  }
}
