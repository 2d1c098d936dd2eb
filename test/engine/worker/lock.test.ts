// The lock an engine's runs hold: onnxruntime-node blocks the event loop for a whole session run, so on
// the CPU, where one run of an SD model takes minutes, the default lock is long enough to outlast it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../../src/config.js";
import { type EngineModel, startEngine } from "../../../src/engine/worker/index.js";
import { type Harness, harness } from "../../queue/support/setup.js";

let h: Harness;
beforeAll(async () => {
  h = await harness();
});
afterAll(() => h.close());

async function lockOf(env: Record<string, string>, device: EngineModel["device"]): Promise<number> {
  const config = loadConfig({ ENGINE_HTTP_PORT: "0", LOG_LEVEL: "silent", ...env }, { envFile: false });
  const engine = await startEngine({
    config,
    redisUrl: h.redis.url,
    loadModel: async () => ({ modelId: "stub", pipelines: {}, device, release: async () => {} }),
  });
  try {
    return engine.worker.lockDurationMs;
  } finally {
    await engine.stop();
  }
}

describe("the engine's lock", () => {
  it("is 2 minutes on a GPU and 15 on the CPU unless ENGINE_LOCK_SECONDS says otherwise", async () => {
    expect(await lockOf({}, "cuda")).toBe(120_000);
    expect(await lockOf({}, "webgpu")).toBe(120_000);
    expect(await lockOf({}, "cpu")).toBe(900_000);
    expect(await lockOf({ ENGINE_LOCK_SECONDS: "30" }, "cpu")).toBe(30_000);
    expect(await lockOf({ ENGINE_LOCK_SECONDS: "300" }, "cuda")).toBe(300_000);
  });
});
