/**
 * `bench sd`: Stable Diffusion 1.5-shaped graphs with random weights made here (no checkpoint needed):
 * the UNet CFG step (batch 2), VAE encode and decode, a text-encoder call, and denoising-loss steps with
 * gradients w.r.t. the context and w.r.t. LoRA r=16 (batch 1) — and the LoRA step as training runs it, Adam
 * inside the graph and its state carried (`train-lora`) —, at one or more image sizes (`--size
 * 512,512x768`: square and portrait side by side). `--tiny` shrinks every network so the whole thing
 * runs on a CPU in seconds (a smoke test of the bundle and the graphs).
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command, Option } from "commander";
import { PACK_ROW } from "../../engine/graph/emit.js";
import type { Graph } from "../../engine/graph/index.js";
import {
  type ComputeDType,
  IO,
  type LossGraphOptions,
  lossGraph,
  textEncoderGraph,
  unetGraph,
  vaeDecodeGraph,
  vaeEncodeGraph,
} from "../../engine/models/components.js";
import { TextEncoderConfigSchema, UNetConfigSchema, VaeConfigSchema } from "../../engine/models/config.js";
import { type LoraInputs, newLoraWeights } from "../../engine/models/lora.js";
import { randomWeights } from "../../engine/models/random-weights.js";
import { ADAM_COEFFICIENTS, adamCoefficients } from "../../engine/optim/adam.js";
import type { FlatLayout } from "../../engine/optim/flat-params.js";
import { startingState } from "../../engine/optim/trainer.js";
import {
  type CudaOptionsStatus,
  createSession,
  cudaOptionsStatus,
  type Device,
  type HostTensor,
  type ProviderOptions,
  resolveDevice,
} from "../../engine/runtime/index.js";
import { UserFacingError } from "../../errors.js";
import { parseSize, type Size } from "../../spec/shape.js";
import { benchDeviceOption } from "../options.js";
import type { CheckpointShapes } from "./random-checkpoint.js";
import { type SessionTimings, timeSession } from "./timing.js";

type Shapes = CheckpointShapes;

const DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
const UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
const VAE_DOWN = Array(4).fill("DownEncoderBlock2D");
const VAE_UP = Array(4).fill("UpDecoderBlock2D");

/**
 * SD 1.5: UNet 320/640/1280/1280 with 8 heads and cross-attention 768, VAE 128/256/512/512, CLIP ViT-L/14
 * text; `native` is the image side its config gives as sample_size × 8 (512 for SD 1.5).
 */
export function sd15Shapes(native = 512): Shapes {
  return {
    unet: UNetConfigSchema.parse({
      block_out_channels: [320, 640, 1280, 1280],
      down_block_types: DOWN,
      up_block_types: UP,
      attention_head_dim: 8,
      cross_attention_dim: 768,
      layers_per_block: 2,
      sample_size: native / 8,
    }),
    vae: VaeConfigSchema.parse({
      block_out_channels: [128, 256, 512, 512],
      down_block_types: VAE_DOWN,
      up_block_types: VAE_UP,
      layers_per_block: 2,
    }),
    clip: TextEncoderConfigSchema.parse({
      hidden_size: 768,
      intermediate_size: 3072,
      num_attention_heads: 12,
      num_hidden_layers: 12,
      hidden_act: "quick_gelu",
    }),
  };
}

/** The same structure at toy widths, for a CPU smoke run (native side 64 by default). */
export function tinyShapes(native = 64): Shapes {
  return {
    unet: UNetConfigSchema.parse({
      block_out_channels: [32, 32, 64, 64],
      down_block_types: DOWN,
      up_block_types: UP,
      attention_head_dim: 8,
      cross_attention_dim: 32,
      layers_per_block: 1,
      sample_size: native / 8,
    }),
    vae: VaeConfigSchema.parse({
      block_out_channels: [32, 32, 64, 64],
      down_block_types: VAE_DOWN,
      up_block_types: VAE_UP,
      layers_per_block: 1,
    }),
    clip: TextEncoderConfigSchema.parse({
      hidden_size: 32,
      intermediate_size: 64,
      num_attention_heads: 4,
      num_hidden_layers: 2,
      hidden_act: "quick_gelu",
    }),
  };
}

/**
 * `--size`: image sizes, comma-separated, each a side ("512") or width×height ("512x768"), each side a
 * multiple of 64 (the SD shapes' multiple: a 4-level VAE and UNet).
 */
export function parseBenchSizes(text: string): Size[] {
  return text.split(",").map((part) => {
    const size = parseSize(part, "--size");
    if (size.width % 64 !== 0 || size.height % 64 !== 0) {
      throw new UserFacingError(`--size ${part.trim()}: each side must be a multiple of 64`);
    }
    return size;
  });
}

/** "512²" or "512×768" (width × height). */
export const formatSize = (s: Size) => (s.width === s.height ? `${s.width}²` : `${s.width}×${s.height}`);

export interface BenchRow extends SessionTimings {
  name: string;
  /** Image width × height in pixels. */
  size: Size;
  dtype: string;
  /** Session creation (graph build + emission + onnxruntime load). */
  createMs: number;
  params: number;
}

function randn(n: number, seed: number): Float32Array {
  // Box–Muller over a small LCG: inputs only need to be plausible, not reproducible across versions.
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 1) / 4294967297;
  };
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  return out;
}

const f32 = (shape: number[], seed: number, scale = 1): HostTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = randn(n, seed);
  if (scale !== 1) for (let i = 0; i < n; i++) data[i] = (data[i] as number) * scale;
  return { dtype: "float32", shape, data };
};

interface Case {
  /** Short name for --only. */
  id: string;
  name: string;
  dtype: ComputeDType;
  build: (weights: ReturnType<typeof randomWeights>) => {
    graph: Graph;
    feeds: () => Record<string, HostTensor>;
  };
}

function cases(
  s: Shapes,
  size: Size,
  unetDtype: ComputeDType,
  lossDtype: ComputeDType,
  vaeDtype: ComputeDType,
): Case[] {
  const factor = 2 ** (s.vae.block_out_channels.length - 1);
  const [lh, lw] = [size.height / factor, size.width / factor];
  const d = s.unet.cross_attention_dim;
  const latent = (b: number, seed: number) => f32([b, s.unet.in_channels, lh, lw], seed);
  const context = (b: number) => f32([b, 77, d], 3);
  const lossFeeds = (lora: LoraInputs | undefined): Record<string, HostTensor> => ({
    [IO.x0]: latent(1, 1),
    [IO.noise]: latent(1, 2),
    [IO.timestep]: { dtype: "float32", shape: [1], data: Float32Array.of(500) },
    [IO.sqrtAlpha]: { dtype: "float32", shape: [1], data: Float32Array.of(0.53) },
    [IO.sqrtOneMinusAlpha]: { dtype: "float32", shape: [1], data: Float32Array.of(0.85) },
    [IO.context]: context(1),
    ...(lora ? lora.feeds(newLoraWeights(loraModules(lora), lora.rank, lora.rank, 0)) : {}),
  });
  // The denoising loss at batch 1 with gradients w.r.t. what `wrt` names.
  // The denoising loss at batch 1 with gradients w.r.t. what `wrt` names; with `optimize`, Adam on them in
  // the graph instead, its state carried from run to run (the runs after the first continue it).
  const lossCase = (
    id: string,
    name: string,
    wrt: Pick<LossGraphOptions, "wrtContext" | "wrtLora" | "loraRank" | "optimize">,
  ): Case => ({
    id,
    name,
    dtype: lossDtype,
    build: (w) => {
      const lg = lossGraph(w, s.unet, {
        batch: 1,
        height: lh,
        width: lw,
        prediction: "epsilon",
        ...wrt,
        dtype: lossDtype,
      });
      // The flat parameters (random here) with Adam's state at zero, as a trainer's first step feeds them.
      const adam = (layout: FlatLayout): Record<string, HostTensor> => ({
        ...startingState(layout, f32([layout.rows, PACK_ROW], 6, 0.01).data as Float32Array),
        [IO.adamCoefficients]: {
          dtype: "float32",
          shape: [ADAM_COEFFICIENTS],
          data: adamCoefficients({ lr: 1e-4 }, 1),
        },
      });
      return {
        graph: lg.graph,
        feeds: () => ({ ...lossFeeds(lg.lora), ...(lg.trained ? adam(lg.trained) : {}) }),
      };
    },
  });
  return [
    {
      id: "text",
      name: "text encoder (batch 1)",
      dtype: "float32",
      build: (w) => ({
        graph: textEncoderGraph(w, s.clip, 1),
        feeds: () => ({
          [IO.inputIds]: {
            dtype: "int64",
            shape: [1, 77],
            data: BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i < 8 ? 320 + i : 49407)),
          },
        }),
      }),
    },
    {
      id: "unet",
      name: "UNet CFG step (batch 2)",
      dtype: unetDtype,
      build: (w) => ({
        graph: unetGraph(w, s.unet, { batch: 2, height: lh, width: lw, dtype: unetDtype }).graph,
        feeds: () => ({
          [IO.sample]: latent(2, 1),
          [IO.timestep]: { dtype: "float32", shape: [2], data: Float32Array.of(500, 500) },
          [IO.context]: context(2),
        }),
      }),
    },
    {
      id: "vae-encode",
      name: "VAE encode",
      dtype: vaeDtype,
      build: (w) => ({
        graph: vaeEncodeGraph(w, s.vae, size.height, size.width, vaeDtype),
        feeds: () => ({ [IO.image]: f32([1, 3, size.height, size.width], 4, 0.5) }),
      }),
    },
    {
      id: "vae-decode",
      name: "VAE decode",
      dtype: vaeDtype,
      build: (w) => ({
        graph: vaeDecodeGraph(w, s.vae, 1, lh, lw, vaeDtype),
        feeds: () => ({ [IO.latents]: latent(1, 5) }),
      }),
    },
    lossCase("loss-context", "loss + d/d context (batch 1)", { wrtContext: true, wrtLora: false }),
    lossCase("loss-lora", "loss + d/d LoRA r=16 (batch 1)", {
      wrtContext: false,
      wrtLora: true,
      loraRank: 16,
    }),
    lossCase("train-lora", "loss + Adam on LoRA r=16 in the graph (batch 1)", {
      wrtContext: false,
      wrtLora: true,
      loraRank: 16,
      optimize: true,
    }),
  ];
}

const CASE_IDS = ["text", "unet", "vae-encode", "vae-decode", "loss-context", "loss-lora", "train-lora"];

function loraModules(lora: LoraInputs) {
  return [...lora.modules].map(([path, m]) => ({ path, inF: m.inF, outF: m.outF }));
}

/** What the CUDA provider took from the add-on at the last session (null when no add-on was loaded). */
export function cudaOptionsLine(): string | null {
  const s = cudaOptionsStatus();
  return s && describeCudaOptions(s);
}

/**
 * The add-on's status in words. With no options set the add-on hands the provider nothing and reads back
 * nothing: its sessions run on onnxruntime's defaults, which is not the same as no CUDA session at all.
 */
export function describeCudaOptions(s: CudaOptionsStatus): string {
  const took = s.applied
    ? s.applied
    : s.error
      ? `none (${s.error})`
      : s.calls > 0
        ? "onnxruntime's defaults (none set)"
        : "none (no CUDA session)";
  const bound = s.boundRuns > 0 ? `; ${s.boundRuns} runs through IO binding (CUDA graphs)` : "";
  return `CUDA provider options as the provider took them: ${took}${bound}`;
}

/** A repeatable key=value flag, collected into a record. */
export function keyValue(v: string, into: Record<string, string>): Record<string, string> {
  const eq = v.indexOf("=");
  if (eq < 1) throw new UserFacingError(`expected key=value, got "${v}"`);
  return { ...into, [v.slice(0, eq)]: v.slice(eq + 1) };
}

export async function runSdBench(opts: {
  device: Device;
  dtype: ComputeDType;
  /** Compute dtype of the loss-and-gradient graphs (the loss and gradients themselves stay float32). */
  lossDtype?: ComputeDType;
  shapes: Shapes;
  /** Image sizes to run every case at, in order. */
  sizes: readonly Size[];
  runs: number;
  /** Compute dtype of the VAE graphs (float32 by default). */
  vaeDtype?: ComputeDType;
  /** Folder for onnxruntime profiles (one per case); timings then include the profiler's overhead. */
  profileDir?: string;
  /** Execution-provider options and session config entries for every session (experiments). */
  providerOptions?: ProviderOptions;
  sessionConfig?: Record<string, string>;
  /** k×k convolutions as im2col + MatMul (default: the runtime's choice for the device). */
  convAsMatMul?: boolean;
  /** Case ids to run (all when absent). */
  only?: readonly string[];
  log?: (line: string) => void;
}): Promise<{ device: string; rows: BenchRow[] }> {
  const device = await resolveDevice(opts.device);
  const rows: BenchRow[] = [];
  // The text encoder does not depend on the image size: it runs once, with the first size's cases.
  const all = opts.sizes.flatMap((size, k) =>
    cases(opts.shapes, size, opts.dtype, opts.lossDtype ?? "float32", opts.vaeDtype ?? "float32")
      .filter((c) => k === 0 || c.id !== "text")
      .map((c) => ({ ...c, size })),
  );
  for (const c of all) {
    if (opts.only && !opts.only.includes(c.id)) continue;
    opts.log?.(`… ${c.name}`);
    const weights = randomWeights();
    const t0 = performance.now();
    const { graph, feeds } = c.build(weights);
    if (opts.profileDir) mkdirSync(opts.profileDir, { recursive: true });
    const profile = opts.profileDir
      ? join(opts.profileDir, `sd-${c.id}-${c.size.width}x${c.size.height}`)
      : undefined;
    const session = await createSession(graph, {
      device,
      providerOptions: opts.providerOptions,
      sessionConfig: opts.sessionConfig,
      convAsMatMul: opts.convAsMatMul,
      ...(profile ? { profile } : {}),
    });
    const createMs = performance.now() - t0;
    const row: BenchRow = {
      name: c.name,
      size: c.size,
      dtype: c.dtype,
      createMs,
      ...(await timeSession(session, feeds(), opts.runs)),
      params: weights.count(),
    };
    rows.push(row);
    opts.log?.(formatRow(row));
    // The host's busiest ops, the GPU's (WebGPU timestamps) and every op left on the CPU provider.
    const shown = (row.profile ?? []).filter(
      (p, i, all) =>
        p.provider === "CPU" ||
        all.filter((q) => q.provider === p.provider).indexOf(p) < (p.provider === "WebGPU:gpu" ? 16 : 10) ||
        i < 10,
    );
    for (const p of shown) {
      opts.log?.(
        `    ${p.op.padEnd(28)} ${p.provider.padEnd(8)} ${String(p.nodes).padStart(5)} nodes ${p.ms.toFixed(2).padStart(10)} ms/run`,
      );
    }
  }
  return { device, rows };
}

function formatRow(r: BenchRow): string {
  const ms = (x: number) => x.toFixed(1).padStart(9);
  return `${`${r.name}, ${formatSize(r.size)}`.padEnd(40)} ${r.dtype.padEnd(8)} ${ms(r.createMs)} ${ms(r.firstRunMs)} ${ms(r.medianMs)} ${ms(r.minMs)} ${String(r.runs).padStart(4)} ${(r.params / 1e6).toFixed(1).padStart(7)}M`;
}

export function sdBenchCommand(): Command {
  return new Command("sd")
    .description("SD 1.5-shaped UNet/VAE/CLIP graphs with random weights: forward and gradient step timings")
    .addOption(benchDeviceOption())
    .addOption(
      new Option("--dtype <dtype>", "UNet forward compute dtype").choices(["fp16", "fp32"]).default("fp16"),
    )
    .addOption(
      new Option("--loss-dtype <dtype>", "compute dtype of the gradient steps")
        .choices(["fp16", "fp32"])
        .default("fp32"),
    )
    .option("--tiny", "toy-width networks at 64² (a quick CPU smoke run)", false)
    .option(
      "--size <sizes>",
      'image sizes, comma-separated: a side or width×height, multiples of 64, e.g. "512,512x768" (default 512; 64 with --tiny)',
      parseBenchSizes,
    )
    .option("--runs <n>", "timed runs per case after the first", (v) => Number.parseInt(v, 10), 5)
    .option("--only <ids>", `run only these cases, comma-separated: ${CASE_IDS.join(", ")}`, (v) =>
      v.split(","),
    )
    .option("--json <file>", "also write the results as JSON")
    .addOption(
      new Option("--vae-dtype <dtype>", "compute dtype of the VAE graphs")
        .choices(["fp16", "fp32"])
        .default("fp32"),
    )
    .option(
      "--ep-option <key=value>",
      "execution-provider option for every session (repeatable), e.g. validationMode=disabled (webgpu), prefer_nhwc=1 (cuda)",
      keyValue,
      {},
    )
    .addOption(
      new Option(
        "--conv <form>",
        "k×k convolutions as im2col + MatMul or direct Conv (default: per device)",
      ).choices(["matmul", "direct"]),
    )
    .option(
      "--session-config <key=value>",
      "onnxruntime session config entry for every session (repeatable)",
      keyValue,
      {},
    )
    .option(
      "--profile <dir>",
      "profile each case with onnxruntime (files in <dir>) and print time per op and provider",
    )
    .action(
      async (o: {
        device: Device;
        dtype: "fp16" | "fp32";
        lossDtype: "fp16" | "fp32";
        tiny: boolean;
        size?: Size[];
        runs: number;
        only?: string[];
        json?: string;
        profile?: string;
        vaeDtype: "fp16" | "fp32";
        epOption: Record<string, string>;
        sessionConfig: Record<string, string>;
        conv?: "matmul" | "direct";
      }) => {
        const unknown = o.only?.filter((id) => !CASE_IDS.includes(id)) ?? [];
        if (unknown.length > 0) {
          throw new UserFacingError(
            `--only: unknown case ${unknown.join(", ")} (one of ${CASE_IDS.join(", ")})`,
          );
        }
        if (!Number.isInteger(o.runs) || o.runs < 1)
          throw new UserFacingError(`--runs must be a whole number ≥ 1, got ${o.runs}`);
        const shapes = o.tiny ? tinyShapes() : sd15Shapes();
        const side = o.tiny ? 64 : 512;
        const sizes = o.size ?? [{ width: side, height: side }];
        const out = (line: string) => process.stdout.write(`${line}\n`);
        out(
          `bench sd: ${o.tiny ? "tiny" : "SD 1.5"} shapes, ${sizes.map(formatSize).join(", ")}, UNet ${o.dtype}, VAE ${o.vaeDtype}, gradient steps ${o.lossDtype}, device ${o.device}${Object.keys(o.epOption).length ? `, provider options ${JSON.stringify(o.epOption)}` : ""}${Object.keys(o.sessionConfig).length ? `, session config ${JSON.stringify(o.sessionConfig)}` : ""}${o.conv ? `, k×k convs ${o.conv}` : ""}`,
        );
        out(
          `${"case, width × height".padEnd(40)} ${"dtype".padEnd(8)} ${"create ms".padStart(9)} ${"first ms".padStart(9)} ${"median ms".padStart(9)} ${"min ms".padStart(9)} runs  params`,
        );
        const result = await runSdBench({
          device: o.device,
          dtype: o.dtype === "fp16" ? "float16" : "float32",
          lossDtype: o.lossDtype === "fp16" ? "float16" : "float32",
          shapes,
          sizes,
          runs: o.runs,
          only: o.only,
          profileDir: o.profile,
          vaeDtype: o.vaeDtype === "fp16" ? "float16" : "float32",
          providerOptions: o.epOption,
          sessionConfig: o.sessionConfig,
          ...(o.conv ? { convAsMatMul: o.conv === "matmul" } : {}),
          log: (l) => {
            if (!l.startsWith("…")) out(l);
          },
        });
        const cuda = cudaOptionsLine();
        if (cuda) out(cuda);
        if (o.json) {
          writeFileSync(
            o.json,
            `${JSON.stringify({ benchmark: "sd", tiny: o.tiny, sizes, ...result, cudaOptions: cudaOptionsStatus()?.applied }, null, 2)}\n`,
          );
          out(`wrote ${o.json}`);
        }
      },
    );
}
