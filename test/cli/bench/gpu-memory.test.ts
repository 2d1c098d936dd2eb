import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { GpuMemorySampler } from "../../../src/cli/bench/gpu-memory.js";

const dir = mkdtempSync(path.join(tmpdir(), "gpu-memory-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("GPU memory sampler", () => {
  it("books nvidia-smi's samples to the stage the benchmark is in", async () => {
    // A stand-in nvidia-smi: two samples, a pause (the benchmark moves on), two more, then it waits.
    const smi = path.join(dir, "nvidia-smi");
    writeFileSync(smi, "#!/bin/sh\necho 1000; echo 2000\nsleep 0.3\necho 7000; echo 3000\nexec sleep 30\n");
    chmodSync(smi, 0o755);
    const gpu = new GpuMemorySampler(smi);
    gpu.stage("embedding");
    await until(() => gpu.peak() === 2000, "the first samples");
    gpu.stage("finetune");
    gpu.stage("finetune"); // the same stage again is one row
    await until(() => gpu.byStage().at(-1)?.peakMiB === 7000, "the second samples");
    await gpu.stop();
    expect(gpu.byStage()).toEqual([
      { stage: "embedding", startMiB: 0, peakMiB: 2000 },
      { stage: "finetune", startMiB: 2000, peakMiB: 7000 },
    ]);
    expect(gpu.peak()).toBe(7000);
    expect(gpu.summary()).toBe("embedding 0.0 → 2.0, finetune 2.0 → 6.8");
  });

  it("measures nothing, and stops at once, without nvidia-smi", async () => {
    const gpu = new GpuMemorySampler(path.join(dir, "absent"));
    gpu.stage("load");
    await gpu.stop();
    expect(gpu.peak()).toBeUndefined();
    expect(gpu.byStage()).toEqual([]);
    expect(gpu.summary()).toBeUndefined();
  });
});
