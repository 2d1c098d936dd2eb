import { describe, expect, it } from "vitest";
import { describeCudaOptions, parseBenchSizes, runSdBench, tinyShapes } from "../../../src/cli/bench/sd.js";

describe("bench sd", () => {
  it("times each case at every --size, square and portrait (64² and 64×128: 8×8 and 8×16 latents)", async () => {
    const sizes = parseBenchSizes("64,64x128");
    expect(sizes).toEqual([
      { width: 64, height: 64 },
      { width: 64, height: 128 },
    ]);
    const { rows } = await runSdBench({
      device: "cpu",
      dtype: "float32",
      shapes: tinyShapes(),
      sizes,
      runs: 1,
      only: ["text", "unet", "vae-decode"],
    });
    // The text encoder does not depend on the size: timed once.
    expect(rows.map((r) => `${r.name} ${r.size.width}×${r.size.height}`)).toEqual([
      "text encoder (batch 1) 64×64",
      "UNet CFG step (batch 2) 64×64",
      "VAE decode 64×64",
      "UNet CFG step (batch 2) 64×128",
      "VAE decode 64×128",
    ]);
    expect(rows.every((r) => r.medianMs > 0 && r.params > 0)).toBe(true);
  }, 60_000);

  it("refuses a size that is not a multiple of 64, naming it", () => {
    expect(() => parseBenchSizes("512,500x768")).toThrow(
      "--size 500x768: each side must be a multiple of 64",
    );
    expect(() => parseBenchSizes("512x4096")).toThrow(/--size 512×4096: each side must be a whole number/);
  });

  it("tells CUDA sessions on onnxruntime's defaults from no CUDA session, and names what the provider took", () => {
    const status = { calls: 0, applied: "", error: "", boundSessions: 0, boundRuns: 0 };
    const line = (s: Partial<typeof status>) => describeCudaOptions({ ...status, ...s });
    const head = "CUDA provider options as the provider took them: ";
    expect(line({})).toBe(`${head}none (no CUDA session)`);
    // The add-on attached with no options: sessions were made, on the provider's defaults.
    expect(line({ calls: 2 })).toBe(`${head}onnxruntime's defaults (none set)`);
    expect(line({ calls: 1, applied: "prefer_nhwc=1;device_id=0", boundRuns: 11 })).toBe(
      `${head}prefer_nhwc=1;device_id=0; 11 runs through IO binding (CUDA graphs)`,
    );
    expect(line({ calls: 1, error: "setting the CUDA provider options: bad value" })).toBe(
      `${head}none (setting the CUDA provider options: bad value)`,
    );
  });
});
