// Mutation testing of the engine's numerical core, by hand (not in CI: far too slow for 2 cores).
// Whole core:      npx stryker run
// One area, fast:  STRYKER_TESTS=test/engine/diffusion npx stryker run --mutate 'src/engine/diffusion/**/*.ts'
// docs/ENGINE.md ("Mutation testing") records the last score and what each run covered.
/** @type {import("@stryker-mutator/api/core").PartialStrykerOptions} */
export default {
  testRunner: "vitest",
  plugins: ["@stryker-mutator/vitest-runner"],
  mutate: [
    "src/engine/graph/**/*.ts",
    "src/engine/diffusion/**/*.ts",
    "src/engine/models/{attention,attention-control,lora,resnet}.ts",
  ],
  // The tests that may kill a mutant: every test file under STRYKER_TESTS (vitest.stryker.config.ts;
  // vitest's related mode finds none here); per-test coverage then runs only those reaching the mutant.
  vitest: { configFile: "vitest.stryker.config.ts", related: false },
  coverageAnalysis: "perTest",
  concurrency: Number(process.env.STRYKER_CONCURRENCY ?? 1),
  // Sessions of the fixture models take seconds; a mutant that loops forever is cut off here.
  timeoutMS: 60_000,
  reporters: ["clear-text", "progress", "json"],
  jsonReporter: { fileName: "reports/mutation/mutation.json" },
  tempDirName: ".stryker-tmp",
  cleanTempDir: true,
};
