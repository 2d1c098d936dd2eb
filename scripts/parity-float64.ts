/**
 * Exact (float64) references for the parity suite, and how far a float32 computation can be from them.
 *
 *   npx tsx scripts/parity-float64.ts exact [fixture dir …]
 *       writes <fixture>/exact.safetensors (+ exact.json): the fixture's single-call, loss, gradient, LoRA
 *       and odd-size results recomputed with the engine's own graphs in float64, and the seeded txt2img at
 *       a well-conditioned size (SEEDED_SIZE) computed so (≈ 1–2 min per fixture).
 *   npx tsx scripts/parity-float64.ts simulate [--seeds N] [--seeded] [--size HxW] [--write] [fixture dir]
 *       prints how far N float32 evaluations scatter from the exact answer (txt2img, inversion, the seeded
 *       txt2img, loss and gradients): the same float64 graphs with every op's output perturbed by a float32
 *       rounding error; with the engine's own float32 error on the seeded txt2img. `--seeded`: that one
 *       only; `--size`: at another latent size (how SEEDED_SIZE was chosen); `--write`: into exact.json.
 *
 * Why our own graphs: extra.safetensors holds torch's float64 answers for the txt2img, the inversion and
 * one UNet call, not for the gradients, LoRA, odd-size calls or a larger txt2img. `exact` recomputes the
 * UNet call too and refuses to write anything unless it lies within 1e-7 of torch's float64 `f64.unet.out`
 * (it is 4.5e-8: both compute the timestep embedding in float32, as diffusers does, and their sin/exp
 * differ in the last bit), its float64 text encoder within 1e-4 of torch's float32 one (2.3e-7) and its
 * float64 txt2img of the golden within CHAIN_TRIPWIRE of torch's float64 one, so the file holds the same
 * maths as torch's float64, independent of the float32 code under test.
 *
 * onnxruntime's CPU provider has no float64 kernel for three ops the graphs use; they are patched into the
 * op table for this run only: k×k convolutions go out as im2col + MatMul (`convAsMatMul`), 1×1 ones as a
 * MatMul, ConvTranspose (a strided conv's input gradient) as one MatMul per kernel offset scattered by
 * Pad, and Erf (GEGLU's exact GELU) as a float64 series. upcast_attention is off in float64 (it would cast
 * down to float32).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { goldenTxt2imgOptions } from "../src/cli/bench/golden.js";
import { DDIMScheduler } from "../src/engine/diffusion/ddim.js";
import { GaussianRng } from "../src/engine/diffusion/rng.js";
import type { Node } from "../src/engine/graph/graph.js";
import { add, Graph, grad, mul, reduceMean, sub, type Tensor } from "../src/engine/graph/index.js";
import type { Emitter } from "../src/engine/graph/op.js";
import { PRIMITIVES } from "../src/engine/graph/primitives.js";
import { StableDiffusion } from "../src/engine/index.js";
import { type Checkpoint, openCheckpoint } from "../src/engine/models/checkpoint.js";
import { clipTextEncoder } from "../src/engine/models/clip.js";
import type { UNetConfig } from "../src/engine/models/config.js";
import { LoraInputs, type LoraWeights, loraFromSafetensors, loraTargets } from "../src/engine/models/lora.js";
import type { ParamSource } from "../src/engine/models/params.js";
import { openSafetensors } from "../src/engine/models/safetensors.js";
import { type UNetInputs, unet } from "../src/engine/models/unet.js";
import type { WeightStore } from "../src/engine/models/weights.js";
import { txt2img } from "../src/engine/pipelines/txt2img.js";
import { createSession, type HostTensor } from "../src/engine/runtime/index.js";
import { ort } from "../src/engine/runtime/ort.js";
import { emitThrough } from "../test/helpers/emit-through.js";
import {
  type FixtureData,
  type Golden,
  loadFixtureData,
  loadGolden,
  norm,
  relError,
} from "../test/helpers/golden.js";
import { type TestTensor, writeSafetensors } from "../test/helpers/write-safetensors.js";

// ---------------------------------------------------------------- float64 kernels the CPU provider lacks

/** Terms of erf's everywhere-positive series; enough for |x| ≤ ERF_CLAMP to float64 precision. */
const ERF_TERMS = 160;
/** erf(6) = 1 − 2e-17: 1 in float64. */
const ERF_CLAMP = 6;

/** erf(x) = 2/√π · e^(−x²) · x · Σₙ (2x²)ⁿ / (1·3·…·(2n+1)): every term positive, Horner from the inside. */
function emitErf64(e: Emitter, node: Node): void {
  const x = e.name(node.inputs[0] as Tensor);
  const c = (v: number) => e.fill("float64", [], v);
  const op = (type: string, inputs: string[]) => {
    const out = e.fresh(`erf64_${type}`);
    e.node(type, inputs, [out]);
    return out;
  };
  const xc = op("Min", [op("Max", [x, c(-ERF_CLAMP)]), c(ERF_CLAMP)]);
  const x2 = op("Mul", [xc, xc]);
  const y = op("Mul", [x2, c(2)]);
  let acc = c(1);
  for (let k = ERF_TERMS; k >= 1; k--)
    acc = op("Add", [op("Div", [op("Mul", [acc, y]), c(2 * k + 1)]), c(1)]);
  const scaled = op("Mul", [op("Mul", [op("Exp", [op("Neg", [x2])]), acc]), xc]);
  e.node("Mul", [scaled, c(2 / Math.sqrt(Math.PI))], [e.name(node.outputs[0] as Tensor)]);
}

/** The same series on the host, checked against known values before the graph is trusted. */
function erfHost(x: number): number {
  const xc = Math.min(ERF_CLAMP, Math.max(-ERF_CLAMP, x));
  const y = 2 * xc * xc;
  let acc = 1;
  for (let k = ERF_TERMS; k >= 1; k--) acc = (acc * y) / (2 * k + 1) + 1;
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-xc * xc) * acc * xc;
}

/** A 1×1 convolution (stride 1, no padding, one group) as w[O, C] @ x[N, C, H·W] + b. */
function emitConv1x1(e: Emitter, node: Node): boolean {
  const [x, w, b] = node.inputs as [Tensor, Tensor, Tensor | undefined];
  const a = node.attrs as { group: number; strides: number[]; pads: number[] };
  const [N, C, H, W] = x.shape as [number, number, number, number];
  const [Co, , KH, KW] = w.shape as [number, number, number, number];
  if (KH !== 1 || KW !== 1 || a.group !== 1 || a.strides.some((s) => s !== 1) || a.pads.some((p) => p !== 0))
    return false;
  const flat = e.fresh("c11_x");
  e.node("Reshape", [e.name(x), e.ints([N, C, H * W])], [flat]);
  const w2 = e.fresh("c11_w");
  e.node("Reshape", [e.name(w), e.ints([Co, C])], [w2]);
  let y = e.fresh("c11_y");
  e.node("MatMul", [w2, flat], [y]);
  if (b) {
    const b2 = e.fresh("c11_b");
    e.node("Reshape", [e.name(b), e.ints([Co, 1])], [b2]);
    const yb = e.fresh("c11_yb");
    e.node("Add", [y, b2], [yb]);
    y = yb;
  }
  e.node("Reshape", [y, e.ints([N, Co, H, W])], [e.name(node.outputs[0] as Tensor)]);
  return true;
}

/**
 * ConvTranspose (one group, no dilation) as Σ over kernel offsets of w[:, :, kh, kw]ᵀ · x, each result
 * spread to every stride-th position (Reshape + Pad) and shifted by its offset (Pad), then cropped.
 */
function emitConvTranspose64(e: Emitter, node: Node): void {
  const [x, w, b] = node.inputs as [Tensor, Tensor, Tensor | undefined];
  const a = node.attrs as {
    strides: [number, number];
    pads: [number, number, number, number];
    dilations: [number, number];
    group: number;
    outputPadding?: [number, number];
  };
  if (a.group !== 1 || a.dilations.some((d) => d !== 1))
    throw new Error("float64 ConvTranspose: groups and dilation are not implemented");
  const [N, Cin, H, W] = x.shape as [number, number, number, number];
  const [, Cout, KH, KW] = w.shape as [number, number, number, number];
  const [sh, sw] = a.strides;
  const [pt, pl, pb, pr] = a.pads;
  const [oh, ow] = a.outputPadding ?? [0, 0];
  const FH = (H - 1) * sh + KH + oh;
  const FW = (W - 1) * sw + KW + ow;
  const step = (type: string, inputs: string[], attrs?: Record<string, number | number[]>) => {
    const out = e.fresh(`ct64_${type}`);
    e.node(type, inputs, [out], attrs);
    return out;
  };
  const xf = step("Reshape", [e.name(x), e.ints([N, Cin, H * W])]);
  let acc = "";
  for (let kh = 0; kh < KH; kh++) {
    for (let kw = 0; kw < KW; kw++) {
      const wk = step("Slice", [e.name(w), e.ints([kh, kw]), e.ints([kh + 1, kw + 1]), e.ints([2, 3])]);
      const wt = step("Transpose", [step("Reshape", [wk, e.ints([Cin, Cout])])], { perm: [1, 0] });
      const y = step("Reshape", [step("MatMul", [wt, xf]), e.ints([N, Cout, H, 1, W, 1])]);
      const spread = step("Pad", [y, e.ints([0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1])]);
      const plane = step("Reshape", [spread, e.ints([N, Cout, H * sh, W * sw])]);
      const shifted = step("Pad", [plane, e.ints([0, 0, kh, kw, 0, 0, KH + oh, KW + ow])]);
      const part = step("Slice", [shifted, e.ints([0, 0]), e.ints([FH, FW]), e.ints([2, 3])]);
      acc = acc ? step("Add", [acc, part]) : part;
    }
  }
  const out = e.name(node.outputs[0] as Tensor);
  const crop = [acc, e.ints([pt, pl]), e.ints([FH - pb, FW - pr]), e.ints([2, 3])];
  if (!b) {
    e.node("Slice", crop, [out]);
    return;
  }
  e.node("Add", [step("Slice", crop), step("Reshape", [e.name(b), e.ints([Cout, 1, 1])])], [out]);
}

/**
 * `simulate`: every float64 op output is multiplied by (1 + u·2⁻²⁴), u ~ U(−1, 1) seeded per node — a
 * rounding error of float32's size (at most half an ulp, as a correctly rounded float32 op makes). Real
 * float32 kernels also round inside their sums, so this is the scatter of an idealized float32 engine.
 */
let roundingSeed = 0;
let roundingNode = 0;

type OpEmit = (e: Emitter, node: Node) => void;

function withRounding(emit: OpEmit): OpEmit {
  return (e, node) => {
    const outs = node.outputs.filter((t) => t.dtype === "float64");
    if (roundingSeed === 0 || outs.length === 0) return emit(e, node);
    emitThrough(emit, e, node, outs, "exact", (exact, out) => {
      const u = e.fresh("u");
      e.node("RandomUniformLike", [exact], [u], {
        dtype: 11,
        low: { f: -1 },
        high: { f: 1 },
        seed: { f: roundingSeed * 1e6 + roundingNode++ },
      });
      const scaled = e.fresh("u_scaled");
      e.node("Mul", [u, e.fill("float64", [], 2 ** -24)], [scaled]);
      const factor = e.fresh("factor");
      e.node("Add", [scaled, e.fill("float64", [], 1)], [factor]);
      e.node("Mul", [exact, factor], [out]);
    });
  };
}

function patchOpsForFloat64(): void {
  for (const [x, want] of [
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [-1.5, -0.9661051464753108],
  ] as const) {
    if (Math.abs(erfHost(x) - want) > 1e-15) throw new Error(`erf series: erf(${x}) = ${erfHost(x)}`);
  }
  const f64Forms: Record<string, (e: Emitter, node: Node, fallback: OpEmit) => void> = {
    Erf: (e, node) => emitErf64(e, node),
    Conv: (e, node, fallback) => {
      if (!emitConv1x1(e, node)) fallback(e, node);
    },
    ConvTranspose: (e, node) => emitConvTranspose64(e, node),
  };
  for (const [op, def] of Object.entries(PRIMITIVES)) {
    const base = def.emit;
    if (!base) continue;
    const f64 = f64Forms[op];
    const emit: OpEmit = f64
      ? (e, node) => ((node.inputs[0] as Tensor).dtype === "float64" ? f64(e, node, base) : base(e, node))
      : base;
    PRIMITIVES[op] = { ...def, emit: withRounding(emit) };
  }
}

// ---------------------------------------------------------------- float64 graphs of the engine's networks

/** A component's parameters as float64: frozen ones as initializers, `trainable` ones as float64 graph inputs. */
class Float64Params implements ParamSource {
  readonly dtype = "float64" as const;
  readonly inputs = new Map<string, Tensor>();
  private readonly made = new Map<string, Tensor>();
  constructor(
    readonly graph: Graph,
    private readonly weights: Pick<WeightStore, "float32">,
    private readonly trainable: (name: string) => boolean = () => false,
  ) {}
  get(name: string, shape: readonly number[]): Tensor {
    let t = this.made.get(name);
    if (!t) {
      const f = Float64Array.from(this.weights.float32(name, shape));
      if (this.trainable(name)) {
        t = this.graph.input(name, "float64", shape);
        this.inputs.set(name, t);
      } else {
        t = this.graph.weight(name, {
          dtype: "float64",
          shape,
          bytes: () => new Uint8Array(f.buffer, f.byteOffset, f.byteLength),
        });
      }
      this.made.set(name, t);
    }
    return t;
  }
}

/** unet() ends with a cast to float32; the float64 value is its input. */
function unet64(p: Float64Params, c: UNetConfig, x: UNetInputs, lora?: LoraInputs): Tensor {
  const out = unet(p, { ...c, upcast_attention: false }, x, lora);
  const out64 = out.node?.op === "Cast" ? (out.node.inputs[0] as Tensor) : out;
  if (out64.dtype !== "float64") throw new Error(`float64 UNet output is ${out64.dtype}`);
  return out64;
}

/** A float64 graph's session: no fused kernels, convs as MatMul, and no QuickGelu fusion (x·σ(x) would
 *  become QuickGelu, which has only a float32 kernel). */
const session64 = (graph: Graph) =>
  createSession(graph, {
    device: "cpu",
    fuse: false,
    convAsMatMul: true,
    sessionConfig: { "optimization.disable_specified_optimizers": "QuickGeluFusion" },
  });

async function run64(graph: Graph, feeds: Record<string, HostTensor>): Promise<Record<string, HostTensor>> {
  const s = await session64(graph);
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

const f64 = (shape: readonly number[], data: ArrayLike<number>): HostTensor => ({
  dtype: "float64",
  shape: [...shape],
  data: Float64Array.from(data),
});
const f32 = (shape: readonly number[], data: ArrayLike<number>): HostTensor => ({
  dtype: "float32",
  shape: [...shape],
  data: Float32Array.from(data),
});

/** The fixture's files and checkpoint, and how its float64 graphs are fed. */
class Fixture {
  readonly golden: Golden;
  readonly extra: FixtureData;
  readonly ckpt: Checkpoint;
  readonly lora: LoraWeights;
  /** Timestep tables (the ᾱ values come from `alpha`). */
  readonly scheduler: DDIMScheduler;
  private readonly alphas: Float32Array;
  constructor(readonly dir: string) {
    this.golden = loadGolden(dir);
    this.extra = loadFixtureData(dir, "extra");
    this.ckpt = openCheckpoint(join(dir, "model"));
    this.scheduler = DDIMScheduler.fromConfig(this.ckpt.scheduler.config);
    this.alphas = this.golden.f32("ddim.alphas_cumprod");
    const store = this.ckpt.unet.weights;
    this.lora = loraFromSafetensors(
      openSafetensors(join(dir, "extra.safetensors")),
      loraTargets(store.names(), (n) => store.info(n).shape),
      { prefix: "lora.weight.", alpha: (this.extra.json.lora as { alpha: number }).alpha },
    );
  }

  /** ᾱ_t exactly as diffusers held it (the golden's float32 table); past the end, set_alpha_to_one's. */
  alpha(t: number): number {
    if (t >= 0) return this.alphas[t] as number;
    return this.ckpt.scheduler.config.set_alpha_to_one ? 1 : (this.alphas[0] as number);
  }

  /** One UNet call (optionally with the fixture's LoRA) on float32 inputs, in float64. */
  async unet(sample: string, data: FixtureData, timesteps: number[], context: Float32Array, lora = false) {
    const c = this.ckpt.unet.config;
    const shape = data.shape(sample);
    const b = shape[0] as number;
    const graph = new Graph("unet64");
    const p = new Float64Params(graph, this.ckpt.unet.weights);
    const li = lora ? new LoraInputs(graph, rankOf(this.lora)) : undefined;
    const x = {
      sample: graph.input("sample", "float64", shape),
      timestep: graph.input("timestep", "float32", [b]),
      context: graph.input("context", "float64", [b, 77, c.cross_attention_dim]),
    };
    graph.output("out", unet64(p, c, x, li));
    const r = await run64(graph, {
      sample: f64(shape, data.f32(sample)),
      timestep: f32([b], timesteps),
      context: f64([b, 77, c.cross_attention_dim], context),
      ...(li ? li.feeds(this.lora) : {}),
    });
    return r.out?.data as Float64Array;
  }

  /**
   * The text encoder's last_hidden_state [n, 77, D] for `prompts` (the engine's token ids, which the parity
   * suite checks against the golden's) in float64: the context the exact txt2img conditions on.
   */
  async textEncoder(prompts: string[]): Promise<Float64Array> {
    const n = prompts.length;
    const graph = new Graph("text64");
    const ids = graph.input("ids", "int64", [n, 77]);
    const p = new Float64Params(graph, this.ckpt.textEncoder.weights);
    const hidden = clipTextEncoder(p, this.ckpt.textEncoder.config, ids);
    if (hidden.dtype !== "float64") throw new Error(`float64 text encoder output is ${hidden.dtype}`);
    graph.output("out", hidden);
    const data = BigInt64Array.from(prompts.flatMap((t) => this.ckpt.tokenizer.encode(t).ids.map(BigInt)));
    return (await run64(graph, { ids: { dtype: "int64", shape: [n, 77], data } })).out?.data as Float64Array;
  }

  /**
   * The golden's denoising loss (grad.x0, grad.noise at grad.timestep, grad.context) in float64 and its
   * gradients: w.r.t. the context and every `grad.d_unet.*` weight, or w.r.t. the fixture's LoRA.
   */
  async lossAndGrads(wrt: "weights" | "lora") {
    const g = this.golden;
    const c = this.ckpt.unet.config;
    const t = g.json["grad.timestep"];
    const ac = this.alpha(t);
    const [sa, sb] = [Math.sqrt(ac), Math.sqrt(1 - ac)];
    const wanted = new Set(g.names("grad.d_unet.").map((n) => n.slice("grad.d_unet.".length)));
    const shape = g.shape("grad.x0");
    const b = shape[0] as number;
    const graph = new Graph("loss64");
    const x0 = graph.input("x0", "float64", shape);
    const noise = graph.input("noise", "float64", shape);
    const context = graph.input("context", "float64", [b, 77, c.cross_attention_dim]);
    const p = new Float64Params(graph, this.ckpt.unet.weights, (n) => wrt === "weights" && wanted.has(n));
    const li = wrt === "lora" ? new LoraInputs(graph, rankOf(this.lora)) : undefined;
    const noisy = add(mul(x0, sa), mul(noise, sb));
    const target =
      this.ckpt.scheduler.config.prediction_type === "epsilon" ? noise : sub(mul(noise, sa), mul(x0, sb));
    const timestep = graph.input("timestep", "float32", [b]);
    const pred = unet64(p, c, { sample: noisy, timestep, context }, li);
    const diff = sub(pred, target);
    const loss = reduceMean(mul(diff, diff), [0, 1, 2, 3], false);
    graph.output("loss", loss);
    const wrtTensors: Array<[string, Tensor]> = [];
    if (wrt === "weights") {
      wrtTensors.push(["grad.d_context", context]);
      for (const [name, tensor] of p.inputs) wrtTensors.push([`grad.d_unet.${name}`, tensor]);
    } else if (li) {
      for (const [path, m] of li.modules) {
        wrtTensors.push(
          [`lora.grad.${path}.lora_A.weight`, m.down],
          [`lora.grad.${path}.lora_B.weight`, m.up],
        );
      }
    }
    const grads = grad(
      loss,
      wrtTensors.map(([, x]) => x),
    );
    wrtTensors.forEach(([name], i) => {
      graph.output(name, grads[i] as Tensor);
    });
    const feeds: Record<string, HostTensor> = {
      x0: f64(shape, g.f32("grad.x0")),
      noise: f64(shape, g.f32("grad.noise")),
      timestep: f32([b], new Array(b).fill(t)),
      context: f64(g.shape("grad.context"), g.f32("grad.context")),
      ...(li ? li.feeds(this.lora) : {}),
    };
    for (const [name, tensor] of p.inputs)
      feeds[name] = f64(tensor.shape, this.ckpt.unet.weights.float32(name));
    return run64(graph, feeds);
  }
}

function rankOf(lora: LoraWeights): number {
  const first = lora.values().next().value;
  if (!first) throw new Error("the fixture's LoRA is empty");
  return first.rank;
}

// ---------------------------------------------------------------- exact: write <fixture>/exact.safetensors

/** torch's float64 UNet call and ours must agree this well for the file to be written. */
const TRIPWIRE = 1e-7;
/**
 * … and the golden's txt2img, torch's float64 and ours: measured 4.9e-8 on sd1, 2.5e-4 on sd2, whose 8×8
 * chain is ill-conditioned (docs/ENGINE.md, Parity) and carries the UNet call's 4.5e-8 (the float32
 * timestep embedding's last bits) that far; a wrong text encoder, guidance or v conversion is ≥ 1e-2 off.
 */
const CHAIN_TRIPWIRE = 1e-3;
/** The float64 text encoder against torch's float32 one: the parity suite's bound for a float32 call. */
const TEXT_TRIPWIRE = 1e-4;

async function writeExact(dir: string): Promise<void> {
  const f = new Fixture(dir);
  const g = f.golden;
  const out = new Map<string, { shape: readonly number[]; data: ArrayLike<number> }>();
  const started = performance.now();

  const unetOut = await f.unet(
    "unet.sample",
    g,
    g.ints("unet.timestep"),
    g.f32("unet.encoder_hidden_states"),
  );
  const vsTorch = relError(unetOut, f.extra.f64("f64.unet.out"));
  console.log(`${dir}: unet.out, ours in float64 vs torch's float64: ${vsTorch.toExponential(2)}`);
  if (!(vsTorch < TRIPWIRE)) throw new Error(`float64 UNet disagrees with torch's f64.unet.out (${vsTorch})`);
  out.set("unet.out", { shape: g.shape("unet.sample"), data: unetOut });

  // The float64 text encoder and sampling loop: the encoder on the golden's prompts must land on torch's
  // float32 output, and the golden's txt2img through both (its latents) on torch's float64 answer.
  const encoded = g.shape("text_encoder.last_hidden_state")[0] as number;
  const text = relError(
    await f.textEncoder(g.json.prompts.slice(0, encoded)),
    g.f64("text_encoder.last_hidden_state"),
  );
  console.log(`${dir}: text encoder, ours in float64 vs torch's float32: ${text.toExponential(2)}`);
  if (!(text < TEXT_TRIPWIRE)) throw new Error(`float64 text encoder is ${text} from torch's float32`);
  const golden = goldenStart(f);
  const chain = relError(
    await txt2img64(f, await exactStart(f, golden.latents, golden.size)),
    f.extra.f64("f64.txt2img.latents_out"),
  );
  console.log(`${dir}: the golden's txt2img, ours in float64 vs torch's float64: ${chain.toExponential(2)}`);
  if (!(chain < CHAIN_TRIPWIRE))
    throw new Error(`float64 txt2img disagrees with torch's f64.txt2img.latents_out (${chain})`);
  out.set("txt2img_seeded.latents_out", {
    shape: [1, f.ckpt.unet.config.in_channels, ...SEEDED_SIZE],
    data: await txt2img64(f, await exactStart(f, seededLatents(f, SEEDED_SEED, SEEDED_SIZE), SEEDED_SIZE)),
  });

  const ctx = g.f32("unet.encoder_hidden_states");
  const first = ctx.subarray(0, ctx.length / (g.shape("unet.encoder_hidden_states")[0] as number));
  out.set("odd.out", {
    shape: f.extra.shape("odd.sample"),
    data: await f.unet("odd.sample", f.extra, f.extra.ints("odd.timestep"), first),
  });
  out.set("lora.out", {
    shape: g.shape("unet.sample"),
    data: await f.unet("unet.sample", g, g.ints("unet.timestep"), ctx, true),
  });
  for (const wrt of ["weights", "lora"] as const) {
    const r = await f.lossAndGrads(wrt);
    for (const [name, t] of Object.entries(r)) {
      out.set(name === "loss" ? (wrt === "lora" ? "lora.loss" : "grad.loss") : name, {
        shape: name === "loss" ? [1] : t.shape,
        data: t.data as ArrayLike<number>,
      });
    }
  }
  // Every result against torch's float32 one: a float32 engine is never 1e-2 off a well-posed result, so
  // a larger gap means the float64 graph computes something else (a wrong LoRA scale, say).
  let worst = 0;
  for (const [name, t] of out) {
    const torch32 = name === "unet.out" || name.startsWith("grad.") ? g : f.extra;
    // Tensors that are zero in exact arithmetic (‖·‖ ~1e-17 here) hold only float32 noise in torch's.
    if (!torch32.has(name) || norm(t.data) < 1e-12) continue;
    const e = relError(t.data, torch32.f64(name));
    if (e > 1e-2)
      console.log(
        `  ${name}: ${e.toExponential(2)}, ‖exact‖ ${norm(t.data).toExponential(2)}, ‖torch‖ ${norm(torch32.f64(name)).toExponential(2)}`,
      );
    worst = Math.max(worst, e);
  }
  console.log(`${dir}: largest distance of torch's float32 results from these: ${worst.toExponential(2)}`);
  if (!(worst < 1e-2)) throw new Error("a float64 result is far from torch's float32 one: not written");
  const tensors: Record<string, TestTensor> = {};
  for (const [name, t] of [...out].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const data = Float64Array.from(t.data);
    tensors[name] = { dtype: "F64", shape: [...t.shape], data: new Uint8Array(data.buffer) };
  }
  writeSafetensors(join(dir, "exact.safetensors"), tensors);
  const json = {
    fixture: f.golden.json.variant ?? dir,
    made_by: "npx tsx scripts/parity-float64.ts exact",
    onnxruntime: ort.env.versions.common,
    desc:
      "The fixture's UNet call (unet.out), odd-size call (odd.out), LoRA call (lora.out), denoising loss and " +
      "gradients (grad.*), LoRA loss and gradients (lora.*) and seeded txt2img (txt2img_seeded, below) computed with the engine's graphs in float64 on " +
      "the CPU (stored weights exactly, timestep embedding in float32 as diffusers computes it). unet.out is " +
      "checked against torch's float64 f64.unet.out before the file is written.",
    "unet.out_vs_torch_f64": vsTorch,
    "text_encoder.last_hidden_state_vs_torch_f32": text,
    "txt2img.latents_out_vs_torch_f64": chain,
    txt2img_seeded: {
      desc:
        "txt2img_seeded.latents_out: the golden's txt2img settings (prompt, negative prompt, steps, guidance) " +
        "from the latents the engine's txt2img draws for `seed` (GaussianRng) at `latent_size` [height, width], " +
        "contexts from the float64 text encoder; a size at which the chain is well conditioned",
      seed: SEEDED_SEED,
      latent_size: SEEDED_SIZE,
    },
    tensors: Object.fromEntries(Object.entries(tensors).map(([n, t]) => [n, [t.shape, "float64"]])),
  };
  // `simulate --write` adds float32_scatter; rewriting the tensors keeps it.
  const previous = existsSync(join(dir, "exact.json"))
    ? (JSON.parse(readFileSync(join(dir, "exact.json"), "utf8")) as Record<string, unknown>)
    : {};
  const merged = previous.float32_scatter ? { ...json, float32_scatter: previous.float32_scatter } : json;
  writeFileSync(join(dir, "exact.json"), `${JSON.stringify(merged, null, 1)}\n`);
  console.log(
    `${dir}: wrote exact.safetensors (${out.size} tensors) in ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );
}

// ---------------------------------------------------------------- simulate: float32 scatter around the exact answer

/** (x₀, ε) of one element from the model output m at sample x, with √ᾱ and √(1−ᾱ) of the timestep. */
function x0eps(vPred: boolean, m: number, x: number, sa: number, sb: number): [number, number] {
  return vPred ? [sa * x - sb * m, sa * m + sb * x] : [(x - sb * m) / sa, m];
}

/** A float64 UNet session for the txt2img/inversion loops, batch b, latents [b, 4, h, w]. */
async function unetLoopSession(f: Fixture, b: number, [h, w]: LatentHW) {
  const c = f.ckpt.unet.config;
  const ch = c.in_channels;
  const graph = new Graph("unet64");
  const p = new Float64Params(graph, f.ckpt.unet.weights);
  const x = {
    sample: graph.input("sample", "float64", [b, ch, h, w]),
    timestep: graph.input("timestep", "float32", [b]),
    context: graph.input("context", "float64", [b, 77, c.cross_attention_dim]),
  };
  graph.output("out", unet64(p, c, x));
  const s = await session64(graph);
  return {
    run: async (sample: Float64Array, t: number, ctx: Float64Array) =>
      (
        await s.run({
          sample: { dtype: "float64", shape: [b, ch, h, w], data: sample },
          timestep: f32([b], new Array(b).fill(t)),
          context: { dtype: "float64", shape: [b, 77, c.cross_attention_dim], data: ctx },
        })
      ).out?.data as Float64Array,
    release: () => s.release(),
  };
}

/** The golden text-encoder output for a prompt (prompts 0…3 are encoded in the golden). */
function promptRow(f: Fixture, prompt: string): Float64Array {
  const g = f.golden;
  const hidden = g.f32("text_encoder.last_hidden_state");
  const per = hidden.length / (g.shape("text_encoder.last_hidden_state")[0] as number);
  const i = g.json.prompts.indexOf(prompt);
  if (i < 0 || (i + 1) * per > hidden.length) throw new Error(`the golden has no context for ${prompt}`);
  return Float64Array.from(hidden.subarray(i * per, (i + 1) * per));
}

/** What a guided txt2img run starts from: latents [1, 4, h, w] and the contexts [negative; prompt]. */
interface Txt2ImgStart {
  latents: Float64Array;
  size: LatentHW;
  context: Float64Array;
}

/** The golden's txt2img start: its latents, and its (float32) text-encoder output as the contexts. */
function goldenStart(f: Fixture): Txt2ImgStart {
  const o = f.golden.json.txt2img;
  const [, , h, w] = f.golden.shape("txt2img.latents_in") as [number, number, number, number];
  const context = new Float64Array(2 * promptRow(f, o.prompt).length);
  context.set(promptRow(f, o.negative_prompt));
  context.set(promptRow(f, o.prompt), context.length / 2);
  return { latents: Float64Array.from(f.golden.f32("txt2img.latents_in")), size: [h, w], context };
}

/**
 * The golden's prompts through the float64 text encoder, from `latents` at `size` (the fixture's own
 * size with its golden latents: the check against torch's float64; a larger one with seeded latents).
 */
async function exactStart(f: Fixture, latents: Float64Array, size: LatentHW): Promise<Txt2ImgStart> {
  const o = f.golden.json.txt2img;
  return { latents, size, context: await f.textEncoder([o.negative_prompt, o.prompt]) };
}

/** diffusers' guided DDIM loop (η 0) in float64, with the golden's prompt settings (steps, guidance). */
async function txt2img64(f: Fixture, start: Txt2ImgStart): Promise<Float64Array> {
  const o = f.golden.json.txt2img;
  const n = start.latents.length;
  const vPred = f.ckpt.scheduler.config.prediction_type === "v_prediction";
  const s = f.scheduler;
  s.setTimesteps(o.steps);
  const alpha = (t: number) => f.alpha(t);
  const u = await unetLoopSession(f, 2, start.size);
  let x = start.latents;
  for (const t of s.timesteps) {
    const both = new Float64Array(2 * n);
    both.set(x);
    both.set(x, n);
    const out = await u.run(both, t, start.context);
    const [aT, aP] = [alpha(t), alpha(s.prevTimestep(t))];
    const [sa, sb] = [Math.sqrt(aT), Math.sqrt(1 - aT)];
    x = x.map((xi, i) => {
      const un = out[i] as number;
      const m = un + o.guidance_scale * ((out[n + i] as number) - un);
      const [x0i, eps] = x0eps(vPred, m, xi, sa, sb);
      return Math.sqrt(aP) * x0i + Math.sqrt(1 - aP) * eps;
    });
  }
  await u.release();
  return x;
}

/** A latent size [height, width]. */
type LatentHW = readonly [number, number];

/**
 * The golden's guided txt2img (prompt, negative prompt, steps, guidance) again at a latent size where the
 * chain is well conditioned: at the fixtures' 8×8 the UNet's bottom level is 1×1 and its GroupNorms see 2
 * values per group, which amplifies float32 rounding ~300× (docs/ENGINE.md, Parity). SEEDED_SIZE's bottom
 * level is 3×4, 24 values per group. The latents are what the engine's txt2img draws for SEEDED_SEED
 * (GaussianRng(seed).normal(n), float32 values, exact in float64), so the parity suite runs it by seed.
 */
const SEEDED_SEED = 0;
const SEEDED_SIZE: LatentHW = [24, 32];

function seededLatents(f: Fixture, seed: number, [h, w]: LatentHW): Float64Array {
  return Float64Array.from(new GaussianRng(seed).normal(f.ckpt.unet.config.in_channels * h * w));
}

/** DDIMInverseScheduler's loop in float64, conditioned on prompt 0, no guidance. */
async function inversion64(f: Fixture): Promise<Float64Array> {
  const g = f.golden;
  const vPred = f.ckpt.scheduler.config.prediction_type === "v_prediction";
  const s = f.scheduler;
  s.setTimesteps(g.shape("inversion.timesteps")[0] as number);
  const alpha = (t: number) => f.alpha(t);
  const ctx = promptRow(f, g.json.prompts[0] as string);
  const [, , h, w] = g.shape("inversion.latents_in") as [number, number, number, number];
  const u = await unetLoopSession(f, 1, [h, w]);
  let x = Float64Array.from(g.f32("inversion.latents_in"));
  for (const t of s.inversionTimesteps()) {
    const m = await u.run(x, t, ctx);
    const aFrom = alpha(Math.min(s.prevTimestep(t), s.numTrainTimesteps - 1));
    const aTo = alpha(t);
    const [sa, sb] = [Math.sqrt(aFrom), Math.sqrt(1 - aFrom)];
    x = x.map((xi, i) => {
      const [x0i, eps] = x0eps(vPred, m[i] as number, xi, sa, sb);
      return Math.sqrt(aTo) * x0i + Math.sqrt(1 - aTo) * eps;
    });
  }
  await u.release();
  return x;
}

interface SimulateOptions {
  seeds: number;
  /** Also the loss and gradients (slower). */
  grads: boolean;
  /** Merge the pipeline results' scatter into <fixture>/exact.json (`float32_scatter`). */
  write: boolean;
  /** The seeded txt2img's latent size (SEEDED_SIZE unless measuring another). */
  size: LatentHW;
  /** Only the seeded txt2img (not the golden's chains). */
  seededOnly: boolean;
}

/** The engine's own float32 txt2img (public API, CPU) of the seeded run: what the parity suite checks. */
async function engineSeeded(dir: string, size: LatentHW): Promise<Float32Array> {
  const o = loadGolden(dir).json.txt2img;
  const sd = await StableDiffusion.load(join(dir, "model"), { device: "cpu", dtype: "fp32" });
  try {
    const start = { seed: SEEDED_SEED, height: size[0] * sd.vaeScale, width: size[1] * sd.vaeScale };
    return (await txt2img(sd, goldenTxt2imgOptions(o, start))).latents;
  } finally {
    await sd.release();
  }
}

/**
 * N float32-rounded evaluations of the chained results (txt2img, inversion), each against torch's float64
 * answer (what the parity suite compares ours with: the float32 contexts' own rounding is part of what a
 * float32 engine cannot avoid), and optionally of the loss and gradients against the exact ones. The
 * seeded txt2img's evaluations (text encoder included) are measured against its exact answer.
 */
async function simulate(dir: string, o: SimulateOptions): Promise<void> {
  const f = new Fixture(dir);
  const torch = (k: string) => f.extra.f64(`f64.${k}.latents_out`);
  if (!o.seededOnly) {
    console.log(
      `${dir}: exact maths with the golden's float32 contexts vs torch's float64 (float64 contexts): txt2img ` +
        `${relError(await txt2img64(f, goldenStart(f)), torch("txt2img")).toExponential(2)}, inversion ` +
        `${relError(await inversion64(f), torch("inversion")).toExponential(2)}`,
    );
  }
  const latents = seededLatents(f, SEEDED_SEED, o.size);
  const seeded = await txt2img64(f, await exactStart(f, latents, o.size));
  const ours = relError(await engineSeeded(dir, o.size), seeded);
  console.log(
    `${dir}: seeded txt2img at ${o.size.join("×")} latents: the engine's float32 lies ${ours.toExponential(2)} from exact`,
  );
  const grads = o.grads ? await f.lossAndGrads("weights") : undefined;
  const rows: Record<string, number[]> = {};
  const note = (k: string, v: number) => {
    rows[k] = [...(rows[k] ?? []), v];
  };
  for (let seed = 1; seed <= o.seeds; seed++) {
    roundingSeed = seed;
    if (!o.seededOnly) {
      note("txt2img.latents_out", relError(await txt2img64(f, goldenStart(f)), torch("txt2img")));
      note("inversion.latents_out", relError(await inversion64(f), torch("inversion")));
    }
    note(
      "txt2img_seeded.latents_out",
      relError(await txt2img64(f, await exactStart(f, latents, o.size)), seeded),
    );
    if (grads) {
      const r = await f.lossAndGrads("weights");
      let worst = 0;
      for (const [name, t] of Object.entries(grads)) {
        const ref = t.data as Float64Array;
        if (norm(ref) < 1e-12) continue;
        const e = relError(r[name]?.data as Float64Array, ref);
        if (name === "loss" || name === "grad.d_context") note(name, e);
        else worst = Math.max(worst, e);
      }
      note("grad.d_unet.* (worst tensor)", worst);
    }
    roundingSeed = 0;
    const last = Object.entries(rows).map(([k, v]) => `${k} ${(v.at(-1) as number).toExponential(2)}`);
    console.log(`seed ${seed}: ${last.join(", ")}`);
  }
  const summary: Record<string, { seeds: number; min: number; median: number; max: number }> = {};
  for (const [k, v] of Object.entries(rows)) {
    const s = [...v].sort((a, b) => a - b);
    summary[k] = {
      seeds: s.length,
      min: s[0] as number,
      median: s[Math.floor(s.length / 2)] as number,
      max: s.at(-1) as number,
    };
    console.log(
      `${k}: ${s.length} simulated float32 evaluations lie ${summary[k].min.toExponential(2)} … ` +
        `${summary[k].max.toExponential(2)} from the reference (median ${summary[k].median.toExponential(2)})`,
    );
  }
  if (o.write) {
    // Only what this run measured is replaced: each entry records the command that made it.
    const path = join(dir, "exact.json");
    const json = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    const made_by = `npx tsx scripts/parity-float64.ts simulate --seeds ${o.seeds}${o.seededOnly ? " --seeded" : ""} --write`;
    const pipelines = ["txt2img.latents_out", "inversion.latents_out", "txt2img_seeded.latents_out"];
    json.float32_scatter = {
      ...(json.float32_scatter as Record<string, unknown> | undefined),
      desc:
        "relative distance from the float64 answer of float32 evaluations simulated on the exact maths " +
        "(every float64 op output times 1 + u·2^-24, u ~ U(-1, 1), seeds 1…N): how far a correctly rounded " +
        "float32 engine scatters on this input. txt2img and inversion: from torch's float64 answer, fed the " +
        "golden's float32 contexts (made by `made_by`); txt2img_seeded: from exact.safetensors' answer, the " +
        "text encoder simulated too (made by its own `made_by`)",
      ...Object.fromEntries(pipelines.filter((k) => summary[k]).map((k) => [k, { ...summary[k], made_by }])),
    };
    writeFileSync(path, `${JSON.stringify(json, null, 1)}\n`);
    console.log(`${path}: float32_scatter written`);
  }
}

// ---------------------------------------------------------------- command line

const [command, ...rest] = process.argv.slice(2);
patchOpsForFloat64();
if (command === "exact") {
  const dirs = rest.length > 0 ? rest : ["test/fixtures/models/sd1", "test/fixtures/models/sd2"];
  for (const dir of dirs) await writeExact(resolve(dir));
} else if (command === "simulate") {
  const i = rest.indexOf("--seeds");
  const seeds = i >= 0 ? Number(rest[i + 1]) : 8;
  const j = rest.indexOf("--size");
  const size = j >= 0 ? (rest[j + 1]?.split("x").map(Number) as [number, number]) : SEEDED_SIZE;
  if (size.length !== 2 || !size.every((v) => Number.isInteger(v) && v > 0))
    throw new Error("--size takes the seeded txt2img's latent size as HxW, e.g. 24x32");
  const write = rest.includes("--write");
  if (write && size.join("x") !== SEEDED_SIZE.join("x"))
    throw new Error(`--write records the scatter at SEEDED_SIZE (${SEEDED_SIZE.join("x")}) only`);
  const dirs = rest.filter(
    (a, k) => !a.startsWith("--") && !["--seeds", "--size"].includes(rest[k - 1] ?? ""),
  );
  for (const dir of dirs.length > 0 ? dirs : ["test/fixtures/models/sd1", "test/fixtures/models/sd2"]) {
    if (!existsSync(join(dir, "exact.json"))) throw new Error(`${dir} has no exact.json: run exact first`);
    await simulate(resolve(dir), {
      seeds,
      grads: rest.includes("--grads"),
      write,
      size,
      seededOnly: rest.includes("--seeded"),
    });
  }
} else {
  console.error(
    "usage: npx tsx scripts/parity-float64.ts exact [fixture dir …] | simulate [--seeds N] [--size HxW] [--grads] [--write] [fixture dir …]",
  );
  process.exit(2);
}
