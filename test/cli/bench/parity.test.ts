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
      "carried state",
    ]);
    // On the CPU in float32 the parity suite's tolerances hold (1e-4 forward, 2e-4 for the gradient here).
    for (const r of rows.slice(0, -1)) {
      expect(r.pass, r.check).toBe(true);
      expect(r.error).toBeLessThan(r.tolerance);
    }
    // The session's carried state: exact.
    expect(rows.at(-1)).toMatchObject({ fixture: "runtime", error: 0, tolerance: 0, pass: true });
  });

  it("names a dtype it does not know", async () => {
    await expect(
      parityBenchCommand().parseAsync(["--device", "cpu", "--dtype", "bf16"], { from: "user" }),
    ).rejects.toThrow("--dtype: bf16 is not fp32 or fp16");
  });
});
