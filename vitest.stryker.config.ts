// vitest's configuration for mutation runs (stryker.config.mjs): the project's, with the test files limited
// to STRYKER_TESTS (a folder or file under test/, default test/engine) so a run on one area stays small.
import { defineConfig } from "vitest/config";
import base from "./vitest.config.js";

const scope = (process.env.STRYKER_TESTS ?? "test/engine").replace(/\/$/, "");
// Replaced, not merged: vitest's mergeConfig would append to the project's include (every test file).
export default defineConfig({
  ...base,
  test: { ...base.test, include: [scope.endsWith(".ts") ? scope : `${scope}/**/*.test.ts`] },
});
