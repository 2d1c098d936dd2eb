import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Fixture files the tests build instead of tracking (test/helpers/single-file-fixtures.ts).
    globalSetup: ["test/global-setup.ts"],
    // Integration tests start redis-server and ONNX sessions: give them room on a 2-core CI machine.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    coverage: {
      provider: "v8",
      include: ["src/**/*.ts"],
      reporter: ["text-summary", "html"],
    },
  },
});
