import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../run-cli.js";

describe("bench photoswap", () => {
  it("learns a concept, runs both inversions, the swap and a cached-concept swap on a random-weight checkpoint, extrapolating full schedules", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "bench-photoswap-"));
    const json = path.join(dir, "result.json");
    const r = await runCli([
      "bench",
      "photoswap",
      "--tiny",
      "--device",
      "cpu",
      "--steps",
      "8",
      "--inner",
      "2",
      "--steps-scale",
      "0.01",
      "--model-dir",
      path.join(dir, "model"),
      "--json",
      json,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/references → concept: [\d.]+ s cold; [\d.]+ s with the class images cached/);
    expect(r.stdout).toMatch(/direct inversion, 8 steps: .* PSNR vs the decoded photo latents Infinity dB/);
    const result = JSON.parse(readFileSync(json, "utf8"));
    const c = result.concept;
    // 1 % of the fast preset's 100 steps (and of its class images' 25 DDIM steps) is below the floor of 5.
    expect(c.preset).toBe("fast");
    expect(c.ran).toBe(5);
    const train = c.ms.train;
    expect(train.warm).toBeCloseTo(100 * train.perStep, 6);
    expect(train.cold).toBeCloseTo(train.first + 99 * train.perStep, 6);
    expect(c.ms.classImages.ran).toBe(5);
    expect(c.ms.total.cold).toBeGreaterThan(c.ms.total.cachedClassImages);
    expect(c.conceptBytes).toBeGreaterThan(0);
    const nt = result.inversion.nullText;
    expect(nt).toMatchObject({ steps: 8, ran: 5, inner: 2, innerTaken: 2 });
    expect(nt.nullText.warm).toBeCloseTo(8 * nt.nullText.perStep, 6);
    expect(Number.isFinite(nt.psnr)).toBe(true);
    expect(result.inversion.direct.steps).toBe(8);
    // The swap cases run at the full --steps with the learned concept: 4 variants in one UNet call a step.
    expect(r.stdout).toMatch(/swap of 4 variants × 8 steps \(one UNet call of 10 rows per step\)/);
    expect(r.stdout).toMatch(/swap with a cached concept, end to end: [\d.]+ s \(encode/);
    expect(result.swap).toMatchObject({ variants: 4, steps: 8 });
    expect(result.swap.warm.swap).toBeGreaterThan(0);
    const cached = result.cached;
    expect(cached).toMatchObject({ variants: 4, steps: 8 });
    // End to end covers its parts: encode, inversion, the variants, decode and the grid (sharp is here);
    // 1 µs of slack for the parts' ms → s → ms float round trip.
    const parts = cached.seconds.encode + cached.seconds.invert + cached.seconds.swap + cached.seconds.decode;
    expect(cached.totalMs).toBeGreaterThan(parts * 1000 + cached.gridMs - 1e-3);
  }, 150_000);
});
