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
    for (const r of rows) {
      expect(r.runs).toBe(2);
      expect(r.minMs).toBeGreaterThan(0);
      expect(r.medianMs).toBeGreaterThanOrEqual(r.minMs);
      expect(r.tflops).toBeCloseTo((r.gflop * 1e9) / (r.medianMs / 1e3) / 1e12, 6);
    }
    // backward counted as twice the forward's FLOPs
    expect((rows[1]?.gflop as number) / (rows[0]?.gflop as number)).toBeCloseTo(3, 9);
    expect(lines).toHaveLength(6);
  });

  it("refuses a bad option with a one-line message", async () => {
    const r = await runCli(["bench", "graph", "--runs", "0"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--runs must be a whole number ≥ 1, got 0");
  });
});
