/**
 * `bench graph`: the engine core on its own. Times three SD-sized workloads built with the graph builder
 * — a matmul chain, a conv stack and an attention block — forward only, and forward + backward (the loss
 * differentiated w.r.t. the input and every weight), on the chosen provider. Weights are random (timings
 * do not depend on their values). `--small` shrinks the shapes for a quick CPU run.
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command, Option } from "commander";
import * as G from "../../engine/graph/index.js";
import { createSession, type Device, type HostTensor, resolveDevice } from "../../engine/runtime/index.js";
import { UserFacingError } from "../../errors.js";
import { benchDeviceOption } from "../options.js";
import { type SessionTimings, timeSession } from "./timing.js";

type Dtype = "fp32" | "fp16";

interface Sizes {
  tokens: number;
  channels: number;
  hidden: number;
  heads: number;
  side: number;
}

const SD: Sizes = { tokens: 4096, channels: 320, hidden: 1280, heads: 8, side: 64 };
const SMALL: Sizes = { tokens: 1024, channels: 64, hidden: 256, heads: 4, side: 32 };

interface Workload {
  name: string;
  /** Forward FLOPs (multiply-adds × 2). */
  flops: number;
  /** Builds the forward pass from the input and the weights it declares. */
  build: (g: G.Graph, dtype: G.DType) => { input: G.Tensor; params: G.Tensor[]; y: G.Tensor };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}

/** Uniform values of variance scale²: enough to keep activations finite through the workloads. */
function randomValues(n: number, scale: number, seed: number): Float32Array {
  const r = lcg(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r() * scale * Math.sqrt(12);
  return out;
}

function hostArray(values: Float32Array, dtype: G.DType) {
  return dtype === "float16" ? G.f32ToF16(values) : values;
}

let seed = 1;
function param(g: G.Graph, name: string, shape: number[], dtype: G.DType): G.Tensor {
  const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
  const values = randomValues(G.numel(shape), 1 / Math.sqrt(fanIn), seed++);
  return g.weight(name, { dtype, shape, bytes: () => new Uint8Array(hostArray(values, dtype).buffer) });
}

function workloads(s: Sizes): Workload[] {
  const { tokens: T, channels: C, hidden: H, heads, side } = s;
  return [
    {
      name: `matmul chain ${T}×${C}→${H}→${C} ×2`,
      flops: 2 * 2 * 2 * T * C * H,
      build: (g, dt) => {
        const input = g.input("x", dt, [T, C]);
        const params: G.Tensor[] = [];
        let h = input;
        for (let i = 0; i < 2; i++) {
          const up = param(g, `up${i}`, [H, C], dt);
          const down = param(g, `down${i}`, [C, H], dt);
          params.push(up, down);
          h = G.linear(G.relu(G.linear(h, up)), down);
        }
        return { input, params, y: h };
      },
    },
    {
      name: `conv stack 4× 3×3 ${C}ch ${side}²`,
      flops: 4 * 2 * side * side * C * C * 9,
      build: (g, dt) => {
        const input = g.input("x", dt, [1, C, side, side]);
        const params: G.Tensor[] = [];
        let h = input;
        for (let i = 0; i < 4; i++) {
          const w = param(g, `conv${i}.weight`, [C, C, 3, 3], dt);
          const b = param(g, `conv${i}.bias`, [C], dt);
          params.push(w, b);
          h = G.conv2d(i ? G.silu(h) : h, w, b, { padding: 1 });
        }
        return { input, params, y: h };
      },
    },
    {
      name: `attention block ${T} tok ${C}ch ${heads} heads`,
      flops: 4 * 2 * T * C * C + 2 * 2 * T * T * C,
      build: (g, dt) => {
        const input = g.input("x", dt, [1, T, C]);
        const gamma = param(g, "norm.weight", [C], "float32");
        const beta = param(g, "norm.bias", [C], "float32");
        const proj = ["to_q", "to_k", "to_v", "to_out"].map((n) => param(g, `${n}.weight`, [C, C], dt));
        const [wq, wk, wv, wo] = proj as [G.Tensor, G.Tensor, G.Tensor, G.Tensor];
        const n = G.layerNorm(input, gamma, beta);
        const a = G.attention(G.linear(n, wq), G.linear(n, wk), G.linear(n, wv), { heads });
        return { input, params: [gamma, beta, ...proj], y: G.add(G.linear(a, wo), input) };
      },
    },
  ];
}

export interface GraphBenchRow extends SessionTimings {
  name: string;
  pass: "forward" | "forward+backward";
  dtype: Dtype;
  createMs: number;
  gflop: number;
  tflops: number;
}

export async function runGraphBench(opts: {
  device: Device;
  dtype: Dtype;
  sizes: Sizes;
  runs: number;
  /** Folder for onnxruntime profiles (one per case); timings then include the profiler's overhead. */
  profileDir?: string;
  log?: (line: string) => void;
}): Promise<{ device: string; rows: GraphBenchRow[] }> {
  const device = await resolveDevice(opts.device);
  const dt: G.DType = opts.dtype === "fp16" ? "float16" : "float32";
  const rows: GraphBenchRow[] = [];
  for (const w of workloads(opts.sizes)) {
    for (const backward of [false, true]) {
      const t0 = performance.now();
      const g = new G.Graph("bench");
      const { input, params, y } = w.build(g, dt);
      if (backward) {
        // Weights as the thing being trained: the loss (float32 by the fp16 policy) w.r.t. x and each weight.
        const loss = G.reduceMean(
          G.mul(y, y),
          y.shape.map((_, i) => i),
        );
        g.output("loss", loss);
        G.grad(loss, [input, ...params]).forEach((gr, i) => {
          g.output(`grad${i}`, gr);
        });
      } else g.output("y", y);
      const slug = `${w.name.split(" ")[0]}-${backward ? "fwd-bwd" : "fwd"}`;
      if (opts.profileDir) mkdirSync(opts.profileDir, { recursive: true });
      const profile = opts.profileDir ? join(opts.profileDir, slug) : undefined;
      const session = await createSession(g, { device, ...(profile ? { profile } : {}) });
      const createMs = performance.now() - t0;
      const x = randomValues(G.numel(input.shape), 1, 99);
      const feeds: Record<string, HostTensor> = {
        x: { dtype: dt, shape: [...input.shape], data: hostArray(x, dt) },
      };
      const timings = await timeSession(session, feeds, opts.runs);
      // Backward costs two matmul-sized products per forward one (input and weight gradients).
      const flops = backward ? 3 * w.flops : w.flops;
      const row: GraphBenchRow = {
        name: w.name,
        pass: backward ? "forward+backward" : "forward",
        dtype: opts.dtype,
        createMs,
        ...timings,
        gflop: flops / 1e9,
        tflops: flops / (timings.medianMs / 1e3) / 1e12,
      };
      rows.push(row);
      opts.log?.(formatRow(row));
      for (const p of row.profile?.slice(0, 8) ?? []) {
        opts.log?.(
          `    ${p.op.padEnd(28)} ${p.provider.padEnd(8)} ${String(p.nodes).padStart(4)} nodes ${p.ms.toFixed(2).padStart(10)} ms/run`,
        );
      }
    }
  }
  return { device, rows };
}

const HEADER = `${"workload".padEnd(40)} ${"pass".padEnd(16)} ${"dtype".padEnd(5)} ${"create ms".padStart(9)} ${"first ms".padStart(9)} ${"median ms".padStart(9)} ${"min ms".padStart(9)} ${"runs".padStart(4)} ${"GFLOP".padStart(7)} ${"TFLOP/s".padStart(7)}`;

function formatRow(r: GraphBenchRow): string {
  const ms = (x: number) => x.toFixed(1).padStart(9);
  return `${r.name.padEnd(40)} ${r.pass.padEnd(16)} ${r.dtype.padEnd(5)} ${ms(r.createMs)} ${ms(r.firstRunMs)} ${ms(r.medianMs)} ${ms(r.minMs)} ${String(r.runs).padStart(4)} ${r.gflop.toFixed(1).padStart(7)} ${r.tflops.toFixed(2).padStart(7)}`;
}

export function graphBenchCommand(): Command {
  return new Command("graph")
    .description(
      "graph builder + runtime micro-benchmark: matmul chain, conv stack, attention block, forward and backward",
    )
    .addOption(benchDeviceOption())
    .addOption(new Option("--dtype <dtype>", "compute dtype").choices(["fp32", "fp16"]).default("fp32"))
    .option(
      "--small",
      `small shapes for a quick CPU run (${SMALL.tokens} tokens × ${SMALL.channels} ch)`,
      false,
    )
    .option("--runs <n>", "timed runs per case after the first", (v) => Number.parseInt(v, 10), 5)
    .option("--json <file>", "also write the results as JSON")
    .option(
      "--profile <dir>",
      "profile each case with onnxruntime (files in <dir>) and print time per op and provider",
    )
    .action(
      async (o: {
        device: Device;
        dtype: Dtype;
        small: boolean;
        runs: number;
        json?: string;
        profile?: string;
      }) => {
        if (!Number.isInteger(o.runs) || o.runs < 1)
          throw new UserFacingError(`--runs must be a whole number ≥ 1, got ${o.runs}`);
        const sizes = o.small ? SMALL : SD;
        const out = (line: string) => process.stdout.write(`${line}\n`);
        out(`bench graph: ${o.small ? "small" : "SD-sized"} shapes, ${o.dtype}, device ${o.device}`);
        out(HEADER);
        const result = await runGraphBench({
          device: o.device,
          dtype: o.dtype,
          sizes,
          runs: o.runs,
          ...(o.profile ? { profileDir: o.profile } : {}),
          log: out,
        });
        out(`device: ${result.device}`);
        if (o.json) {
          const doc = {
            date: new Date().toISOString(),
            device: result.device,
            dtype: o.dtype,
            sizes,
            rows: result.rows,
          };
          writeFileSync(o.json, `${JSON.stringify(doc, null, 2)}\n`);
          out(`wrote ${o.json}`);
        }
      },
    );
}
