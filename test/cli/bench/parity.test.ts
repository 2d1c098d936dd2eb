import { describe, expect, it } from "vitest";
import { parityBenchCommand, runParity } from "../../../src/cli/bench/parity.js";

describe("bench parity", () => {
  it("checks every golden of a fixture on a device and holds it to its tolerance", async () => {
    const { device, rows } = await runParity({
      device: "cpu",
      dtypes: ["fp32"],
      fixtures: ["test/fixtures/models/sd1"],
    });
    expect(device).toBe("cpu");
    expect(rows.map((r) => r.check)).toEqual([
      "text_encoder",
      "unet",
      "vae.encode.mean",
      "txt2img.latents_out",
      "grad.loss",
      "grad.d_context",
    ]);
    // On the CPU in float32 the parity suite's tolerances hold (1e-4 forward, 2e-4 for the gradient here).
    for (const r of rows) {
      expect(r.pass, r.check).toBe(true);
      expect(r.error).toBeLessThan(r.tolerance);
    }
  });

  it("names a dtype it does not know", async () => {
    await expect(
      parityBenchCommand().parseAsync(["--device", "cpu", "--dtype", "bf16"], { from: "user" }),
    ).rejects.toThrow("--dtype: bf16 is not fp32 or fp16");
  });
});
