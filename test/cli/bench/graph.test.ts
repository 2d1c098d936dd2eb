import { describe, expect, it } from "vitest";
import { runGraphBench } from "../../../src/cli/bench/graph.js";
import { runCli } from "../run-cli.js";

describe("bench graph", () => {
  it("times every workload forward and forward+backward and derives TFLOP/s from the median", async () => {
    const lines: string[] = [];
    const { device, rows } = await runGraphBench({
      device: "cpu",
      dtype: "fp32",
      sizes: { tokens: 64, channels: 16, hidden: 32, heads: 2, side: 8 },
      runs: 2,
      log: (l) => lines.push(l),
    });
    expect(device).toBe("cpu");
    expect(rows.map((r) => `${r.name.split(" ")[0]} ${r.pass}`)).toEqual([
      "matmul forward",
      "matmul forward+backward",
      "conv forward",
      "conv forward+backward",
      "attention forward",
      "attention forward+backward",
    ]);
    // Known counts at these sizes, 2 FLOPs per multiply-add, counted from the workloads' shapes:
    // matmul: 4 linears of 64 tokens × 16 × 32 → 4 · 2 · 64·16·32 = 262 144;
    // conv: 4 convs 3×3, 16 → 16 channels over 8×8 → 4 · 2 · 64 · 16·16·9 = 1 179 648;
    // attention: q, k, v, out projections 4 · 2 · 64·16·16 = 131 072, plus q·kᵀ and p·v 2 · 2 · 64·64·16 = 262 144.
    // forward+backward counts the backward as twice the forward (two matmuls per matmul): 3×.
    const forward = { matmul: 262_144, conv: 1_179_648, attention: 393_216 };
    rows.forEach((r, i) => {
      const f = forward[r.name.split(" ")[0] as keyof typeof forward];
      expect(r.gflop * 1e9, `${r.name} ${r.pass}`).toBeCloseTo(i % 2 === 0 ? f : 3 * f, 3);
      expect(r.runs).toBe(2);
      expect(r.minMs).toBeGreaterThan(0);
      expect(r.medianMs).toBeGreaterThanOrEqual(r.minMs);
      // TFLOP/s is the count over the median time.
      expect(r.tflops).toBeCloseTo((r.gflop * 1e9) / (r.medianMs / 1e3) / 1e12, 6);
    });
    expect(lines).toHaveLength(6);
  });

  it("refuses a bad option with a one-line message", async () => {
    const r = await runCli(["bench", "graph", "--runs", "0"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--runs must be a whole number ≥ 1, got 0");
  });
});
