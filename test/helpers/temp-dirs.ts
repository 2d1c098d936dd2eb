import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach } from "vitest";

/**
 * Call at a test file's top level: returns a maker of fresh temp folders named `prefix…`, each removed
 * after the test that made it. Called before the file's own afterEach, so (vitest runs after-hooks last
 * registered first) what that hook stops is stopped before its folder goes.
 */
export function tempDirs(prefix: string): () => string {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(path.join(tmpdir(), prefix));
    dirs.push(dir);
    return dir;
  };
}
