/**
 * Is the engine right where the parity suite excuses a miss by float32 conditioning (sd2's 4-step guided
 * txt2img, 3.3e-2 off the golden; the 4-step inversion, 1.6e-3)? This recomputes both with OUR UNet
 * graph in float64 on the CPU provider, with the golden text-encoder context and the golden input
 * latents, and the DDIM arithmetic in float64, then prints
 *   ‖ours64 − golden‖/‖golden‖, ‖ours32 − golden‖/‖golden‖, ‖ours32 − ours64‖/‖ours64‖.
 * If float32 rounding alone explains the golden miss, ours32 and the golden are both about equally far
 * from ours64; a bug would leave ours64 far from the golden in a way ours32 does not share.
 * To weigh those distances it also prints: a second float32 rounding path (the same graph unfused, convs
 * as MatMul); how far ours64 and ours32 move for a one-ulp nudge of the input latents, and ours32's error
 * at the nudged inputs (more samples of float32's error); float64 with only the attention in float32;
 * float64 with only one op type's outputs rounded to float32, per op type; and the float32 UNet's error
 * per step along ours64's trajectory. About a minute on two cores.
 *
 * float64 needs three things the CPU provider lacks kernels for, patched into the op table for this run
 * only: k×k convolutions go out as im2col + MatMul (`convAsMatMul`), 1×1 ones as MatMul, and Erf (GEGLU's
 * exact GELU) as a float64 series. upcast_attention is off in float64 (it would cast down to float32);
 * the timestep embedding stays float32 as torch computes it, then is cast up.
 *
 *   npx tsx scripts/parity-float64.ts [fixture dir, default test/fixtures/models/sd2]
 */

import { Graph, type Node, type Tensor } from "../src/engine/graph/graph.js";
import type { Emitter } from "../src/engine/graph/op.js";
import { PRIMITIVES } from "../src/engine/graph/primitives.js";
import { StableDiffusion } from "../src/engine/index.js";
import { openCheckpoint } from "../src/engine/models/checkpoint.js";
import { IO, unetGraph } from "../src/engine/models/components.js";
import type { ParamSource } from "../src/engine/models/params.js";
import { unet } from "../src/engine/models/unet.js";
import type { WeightStore } from "../src/engine/models/weights.js";
import { ddimInvert } from "../src/engine/pipelines/invert.js";
import { sampleLatents } from "../src/engine/pipelines/sample.js";
import { createSession } from "../src/engine/runtime/index.js";
import { loadGolden, relError } from "../test/helpers/golden.js";

/** Terms of erf's everywhere-positive series; enough for |x| ≤ ERF_CLAMP to float64 precision. */
const ERF_TERMS = 160;
/** erf(6) = 1 − 2e-17: 1 in float64. */
const ERF_CLAMP = 6;

/**
 * erf(x) = 2/√π · e^(−x²) · x · Σₙ (2x²)ⁿ / (1·3·…·(2n+1)): every term positive, so no cancellation;
 * Horner from the innermost term.
 */
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

/** The same series on the host, to check it against known values before trusting the graph. */
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

/** Op types whose float64 outputs are rounded to float32 (and widened back): where float32 rounding bites. */
const roundToFloat32 = new Set<string>();

/** Wraps an op's emitter: with the op in `roundToFloat32`, its float64 outputs pass through float32. */
function withRounding(op: string, emit: (e: Emitter, node: Node) => void): (e: Emitter, node: Node) => void {
  return (e, node) => {
    const outs = node.outputs.filter((t) => t.dtype === "float64");
    if (!roundToFloat32.has(op) || outs.length === 0) return emit(e, node);
    const tmp = new Map(outs.map((t) => [t, e.fresh(`r32_${op}`)]));
    const inner: Emitter = {
      device: e.device,
      convAsMatMul: e.convAsMatMul,
      name: (t) => tmp.get(t) ?? e.name(t),
      fresh: (h) => e.fresh(h),
      node: (...a) => e.node(...a),
      ints: (v) => e.ints(v),
      int64s: (v, h) => e.int64s(v, h),
      fill: (d, sh, v) => e.fill(d, sh, v),
    };
    emit(inner, node);
    for (const [t, name] of tmp) {
      const f = e.fresh(`r32_${op}_f32`);
      e.node("Cast", [name], [f], { to: 1 });
      e.node("Cast", [f], [e.name(t)], { to: 11 });
    }
  };
}

function patchOpsForFloat64(): void {
  for (const [op, def] of Object.entries(PRIMITIVES)) {
    if (def.emit) PRIMITIVES[op] = { ...def, emit: withRounding(op, def.emit) };
  }
  const erf = PRIMITIVES.Erf;
  const conv = PRIMITIVES.Conv;
  if (!erf?.emit || !conv?.emit) throw new Error("op table has no Erf / Conv emitter");
  const [erfEmit, convEmit] = [erf.emit, conv.emit];
  PRIMITIVES.Erf = {
    ...erf,
    emit: (e, node) =>
      (node.inputs[0] as Tensor).dtype === "float64" ? emitErf64(e, node) : erfEmit(e, node),
  };
  PRIMITIVES.Conv = {
    ...conv,
    emit: (e, node) => {
      if ((node.inputs[0] as Tensor).dtype === "float64" && emitConv1x1(e, node)) return;
      convEmit(e, node);
    },
  };
}

/** Every UNet parameter as a float64 initializer (fp16/fp32 stored values are exact in float64). */
class Float64Params implements ParamSource {
  readonly dtype = "float64" as const;
  private readonly made = new Map<string, Tensor>();
  constructor(
    readonly graph: Graph,
    private readonly store: WeightStore,
  ) {}
  get(name: string, shape: readonly number[]): Tensor {
    let t = this.made.get(name);
    if (!t) {
      const f = Float64Array.from(this.store.float32(name, shape));
      t = this.graph.weight(name, {
        dtype: "float64",
        shape,
        bytes: () => new Uint8Array(f.buffer, f.byteOffset, f.byteLength),
      });
      this.made.set(name, t);
    }
    return t;
  }
}

const fixture = process.argv[2] ?? "test/fixtures/models/sd2";
const g = loadGolden(fixture);
const ckpt = openCheckpoint(g.modelDir);
const c = ckpt.unet.config;
const sched = ckpt.scheduler.config;
if (sched.clip_sample) throw new Error("this script does not implement clip_sample");
const vPred = sched.prediction_type === "v_prediction";

for (const [x, want] of [
  [0.5, 0.5204998778130465],
  [1, 0.8427007929497149],
  [2, 0.9953222650189527],
  [3, 0.9999779095030014],
  [-1.5, -0.9661051464753108],
] as const) {
  const got = erfHost(x);
  if (Math.abs(got - want) > 1e-15) throw new Error(`erf series: erf(${x}) = ${got}, expected ${want}`);
}
patchOpsForFloat64();

const [, , lh, lw] = g.shape("txt2img.latents_in") as [number, number, number, number];
const n = c.in_channels * lh * lw;
const size = { height: lh, width: lw };
const ctxLen = 77;
const D = c.cross_attention_dim;

/** `attention32`: q, k, v rounded to float32 and attention computed in float32 (upcast_attention's path). */
async function unet64Session(batch: number, attention32 = false) {
  const graph = new Graph("unet64");
  const sample = graph.input("sample", "float64", [batch, c.in_channels, lh, lw]);
  const timestep = graph.input("timestep", "float32", [batch]);
  const context = graph.input("context", "float64", [batch, ctxLen, D]);
  const p = new Float64Params(graph, ckpt.unet.weights);
  const out = unet(p, { ...c, upcast_attention: attention32 }, { sample, timestep, context });
  // unet() ends with a cast to float32; the float64 value is its input.
  const out64 = out.node?.op === "Cast" ? (out.node.inputs[0] as Tensor) : out;
  if (out64.dtype !== "float64") throw new Error(`float64 UNet output is ${out64.dtype}`);
  graph.output("out", out64);
  // onnxruntime would fuse x·σ(x) into QuickGelu, which has only a float32 kernel.
  const s = await createSession(graph, {
    device: "cpu",
    fuse: false,
    convAsMatMul: true,
    sessionConfig: { "optimization.disable_specified_optimizers": "QuickGeluFusion" },
  });
  return async (x: Float64Array, t: number | number[], ctx: Float64Array): Promise<Float64Array> => {
    const r = await s.run({
      sample: { dtype: "float64", shape: [batch, c.in_channels, lh, lw], data: x },
      timestep: {
        dtype: "float32",
        shape: [batch],
        data: typeof t === "number" ? new Float32Array(batch).fill(t) : Float32Array.from(t),
      },
      context: { dtype: "float64", shape: [batch, ctxLen, D], data: ctx },
    });
    return r.out?.data as Float64Array;
  };
}

/** Golden text-encoder rows (prompts 0…3 are encoded in the golden), as [k, 77, D]. */
const hidden = g.f32("text_encoder.last_hidden_state");
const promptRow = (prompt: string): Float32Array => {
  const i = g.json.prompts.indexOf(prompt);
  if (i < 0 || i >= (g.shape("text_encoder.last_hidden_state")[0] as number))
    throw new Error(`the golden has no text-encoder output for ${JSON.stringify(prompt)}`);
  return hidden.slice(i * ctxLen * D, (i + 1) * ctxLen * D);
};
const concat = <T extends Float32Array | Float64Array>(a: T, b: T): T => {
  const out = new (a.constructor as new (k: number) => T)(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};

const sd = await StableDiffusion.load(g.modelDir, { device: "cpu", dtype: "fp32" });
const scheduler = sd.scheduler();
/** ᾱ as diffusers holds them (float32 values), used exactly. */
const alpha = (t: number) => (t >= 0 ? (scheduler.alphasCumprod[t] as number) : scheduler.finalAlphaCumprod);

/** (x₀, ε) of one element from the model output m at sample x, with √ᾱ and √(1−ᾱ) of the timestep. */
const x0eps = (m: number, x: number, sa: number, sb: number): [number, number] =>
  vPred ? [sa * x - sb * m, sa * m + sb * x] : [(x - sb * m) / sa, m];

function report(
  what: string,
  ours64: ArrayLike<number>,
  ours32: ArrayLike<number>,
  golden: ArrayLike<number>,
) {
  console.log(
    `${what}: ‖ours64−golden‖/‖golden‖ ${relError(ours64, golden).toExponential(2)}, ` +
      `‖ours32−golden‖/‖golden‖ ${relError(ours32, golden).toExponential(2)}, ` +
      `‖ours32−ours64‖/‖ours64‖ ${relError(ours32, ours64).toExponential(2)}`,
  );
}

// ---------------------------------------------------------------- one UNet call (the golden's inputs)
{
  const sample = g.f32("unet.sample");
  const ts = g.ints("unet.timestep");
  const ctx = g.f32("unet.encoder_hidden_states");
  if ((g.shape("unet.sample")[2] as number) === lh) {
    const run64 = await unet64Session(ts.length);
    const o64 = await run64(Float64Array.from(sample), ts, Float64Array.from(ctx));
    const o32 = await sd.predictNoise(sample, size, ts, ctx);
    report("unet.out (one call)", o64, o32, g.f32("unet.out"));
  }
}

/** A UNet on float64 host arrays; float32 sessions round the inputs and widen the output. */
type UNetRun = (x: Float64Array, t: number | number[], ctx: Float64Array) => Promise<Float64Array>;

/** The same UNet graph as the engine's in float32, but emitted another way (no fused kernels, convs as
 *  im2col + MatMul): a second float32 rounding path, to see how far two of them drift apart. */
async function unet32AltSession(batch: number): Promise<UNetRun> {
  const { graph } = unetGraph(ckpt.unet.weights, c, { batch, height: lh, width: lw });
  const s = await createSession(graph, { device: "cpu", fuse: false, convAsMatMul: true });
  return async (x, t, ctx) => {
    const r = await s.run({
      [IO.sample]: { dtype: "float32", shape: [batch, c.in_channels, lh, lw], data: Float32Array.from(x) },
      [IO.timestep]: {
        dtype: "float32",
        shape: [batch],
        data: typeof t === "number" ? new Float32Array(batch).fill(t) : Float32Array.from(t),
      },
      [IO.context]: { dtype: "float32", shape: [batch, ctxLen, D], data: Float32Array.from(ctx) },
    });
    return Float64Array.from(r[IO.unetOut]?.data as Float32Array);
  };
}

/** diffusers' guided DDIM loop in float64 arithmetic; `round32` stores the latents as float32 after each step. */
async function txt2imgLoop(run: UNetRun, latents: Float64Array, ctx: Float64Array, round32: boolean) {
  const o = g.json.txt2img;
  scheduler.setTimesteps(o.steps);
  let x = latents;
  for (const t of scheduler.timesteps) {
    x = txt2imgStep(await run(concat(x, x), t, ctx), x, t);
    if (round32) x = Float64Array.from(Float32Array.from(x));
  }
  return x;
}

/** One guided DDIM step (η 0) in float64 from the [uncond; cond] UNet output at t. */
function txt2imgStep(out: Float64Array, x: Float64Array, t: number): Float64Array {
  const aT = alpha(t);
  const aP = alpha(scheduler.prevTimestep(t));
  const [sa, sb, sp, sq] = [Math.sqrt(aT), Math.sqrt(1 - aT), Math.sqrt(aP), Math.sqrt(1 - aP)];
  const next = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = out[i] as number;
    const m = u + g.json.txt2img.guidance_scale * ((out[n + i] as number) - u);
    const [x0, eps] = x0eps(m, x[i] as number, sa, sb);
    next[i] = sp * x0 + sq * eps;
  }
  return next;
}

/** DDIMInverseScheduler's loop in float64: (x₀, ε) with the scales of the timestep it steps from, re-noised to t. */
async function inversionLoop(run: UNetRun, latents: Float64Array, ctx: Float64Array, round32: boolean) {
  scheduler.setTimesteps(g.shape("inversion.timesteps")[0] as number);
  let x = latents;
  for (const t of scheduler.inversionTimesteps()) {
    const m = await run(x, t, ctx);
    const aFrom = alpha(Math.min(scheduler.prevTimestep(t), scheduler.numTrainTimesteps - 1));
    const aTo = alpha(t);
    const [sa, sb] = [Math.sqrt(aFrom), Math.sqrt(1 - aFrom)];
    const next = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const [x0, eps] = x0eps(m[i] as number, x[i] as number, sa, sb);
      const v = Math.sqrt(aTo) * x0 + Math.sqrt(1 - aTo) * eps;
      next[i] = round32 ? Math.fround(v) : v;
    }
    x = next;
  }
  return x;
}

/** One float32 ulp up/down alternately (phase 0) or the opposite (phase 1), as the parity suite nudges. */
const nudge = (x: Float32Array, phase: number) =>
  Float64Array.from(x, (v, i) => Math.fround(v * (1 + ((i + phase) % 2 ? 2 ** -23 : -(2 ** -23)))));

function conditioning(what: string, base: Float64Array, moved: Float64Array[]) {
  const spread = Math.max(...moved.map((m) => relError(m, base)));
  console.log(`${what}: ours64 moves by ${spread.toExponential(2)} for a one-ulp nudge of its float32 input`);
}

// ---------------------------------------------------------------- txt2img, guided
{
  const o = g.json.txt2img;
  const ctx32 = concat(promptRow(o.negative_prompt), promptRow(o.prompt));
  const ctx64 = Float64Array.from(ctx32);
  const run64 = await unet64Session(2);
  const x64 = await txt2imgLoop(run64, Float64Array.from(g.f32("txt2img.latents_in")), ctx64, false);
  // ours32: the engine's float32 sampling loop (what txt2img runs) on the same, golden, context.
  const x32 = await sampleLatents(sd, {
    latents: g.f32("txt2img.latents_in"),
    size,
    contexts: promptRow(o.prompt),
    uncond: promptRow(o.negative_prompt),
    guidance: o.guidance_scale,
    steps: o.steps,
  });
  const golden = g.f32("txt2img.latents_out");
  report("txt2img.latents_out (golden context)", x64, x32, golden);
  const alt = await txt2imgLoop(
    await unet32AltSession(2),
    Float64Array.from(g.f32("txt2img.latents_in")),
    ctx64,
    true,
  );
  report("txt2img.latents_out, 2nd float32 path as ours32", x64, alt, golden);
  console.log(`txt2img: ‖ours32 − 2nd float32 path‖/‖ours32‖ ${relError(alt, x32).toExponential(2)}`);
  const moved: Float64Array[] = [];
  for (const phase of [0, 1])
    moved.push(await txt2imgLoop(run64, nudge(g.f32("txt2img.latents_in"), phase), ctx64, false));
  conditioning("txt2img", x64, moved);
  const moved32: Float32Array[] = [];
  for (const phase of [0, 1]) {
    const latents = Float32Array.from(nudge(g.f32("txt2img.latents_in"), phase));
    const contexts = promptRow(o.prompt);
    const uncond = promptRow(o.negative_prompt);
    moved32.push(
      await sampleLatents(sd, {
        latents,
        size,
        contexts,
        uncond,
        guidance: o.guidance_scale,
        steps: o.steps,
      }),
    );
  }
  const att32 = await txt2imgLoop(
    await unet64Session(2, true),
    Float64Array.from(g.f32("txt2img.latents_in")),
    ctx64,
    false,
  );
  report("txt2img.latents_out, float64 but attention in float32 as ours32", x64, att32, golden);
  // Float64 everywhere but one op type's outputs rounded to float32: which rounding the result feels.
  const ops = new Map<string, number>();
  for (const op of Object.keys(PRIMITIVES)) {
    roundToFloat32.clear();
    roundToFloat32.add(op);
    const r = await txt2imgLoop(
      await unet64Session(2),
      Float64Array.from(g.f32("txt2img.latents_in")),
      ctx64,
      false,
    );
    const err = relError(r, x64);
    if (err > 0) ops.set(op, err);
  }
  roundToFloat32.clear();
  console.log(
    `txt2img, float64 with one op type's outputs rounded to float32, ‖·−ours64‖/‖ours64‖: ${[...ops]
      .sort((a, b) => b[1] - a[1])
      .map(([op, err]) => `${op} ${err.toExponential(2)}`)
      .join(", ")}`,
  );
  const spread32 = Math.max(...moved32.map((m) => relError(m, x32)));
  console.log(`txt2img: ours32 moves by ${spread32.toExponential(2)} for the same nudge`);
  // More samples of float32's error at this input: each nudged ours32 against ours64 at the same input.
  moved32.forEach((m, phase) => {
    console.log(
      `txt2img, nudge ${phase}: ‖ours32−ours64‖/‖ours64‖ ${relError(m, moved[phase] as Float64Array).toExponential(2)}`,
    );
  });
  // Where the float32 error enters: the engine's float32 UNet against float64 on ours64's own trajectory.
  scheduler.setTimesteps(o.steps);
  let x: Float64Array = Float64Array.from(g.f32("txt2img.latents_in"));
  for (const t of scheduler.timesteps) {
    const out64 = await run64(concat(x, x), t, ctx64);
    const out32 = await sd.predictNoise(Float32Array.from(concat(x, x)), size, t, ctx32);
    const part = (a: ArrayLike<number>, k: number) =>
      Array.from({ length: n }, (_, i) => a[k * n + i] as number);
    const guided = (a: ArrayLike<number>) =>
      part(a, 0).map((u, i) => u + o.guidance_scale * ((a[n + i] as number) - u));
    const diff = part(out64, 1).map((cv, i) => cv - (out64[i] as number));
    console.log(
      `  t=${t}: float32 UNet error uncond ${relError(part(out32, 0), part(out64, 0)).toExponential(2)}, ` +
        `cond ${relError(part(out32, 1), part(out64, 1)).toExponential(2)}, guided ${relError(guided(out32), guided(out64)).toExponential(2)}; ` +
        `‖cond−uncond‖/‖uncond‖ ${relError(part(out64, 1), part(out64, 0)).toExponential(2)}, ‖guided‖/‖uncond‖ ${(Math.hypot(...guided(out64)) / Math.hypot(...part(out64, 0))).toFixed(2)}, ‖Δ‖ ${Math.hypot(...diff).toExponential(2)}`,
    );
    x = txt2imgStep(out64, x, t);
  }
}

// ---------------------------------------------------------------- inversion, prompt 0, no guidance
{
  const ctx32 = promptRow(g.json.prompts[0] as string);
  const ctx64 = Float64Array.from(ctx32);
  const run64 = await unet64Session(1);
  const x64 = await inversionLoop(run64, Float64Array.from(g.f32("inversion.latents_in")), ctx64, false);
  // ours32: the engine's float32 DDIM inversion on the same, golden, context.
  const { latents } = await ddimInvert(sd, {
    latents: g.f32("inversion.latents_in"),
    size,
    context: ctx32,
    steps: g.shape("inversion.timesteps")[0] as number,
  });
  const x32 = latents[latents.length - 1] as Float32Array;
  const golden = g.f32("inversion.latents_out");
  report("inversion.latents_out (golden context)", x64, x32, golden);
  const alt = await inversionLoop(
    await unet32AltSession(1),
    Float64Array.from(g.f32("inversion.latents_in")),
    ctx64,
    true,
  );
  report("inversion.latents_out, 2nd float32 path as ours32", x64, alt, golden);
  console.log(`inversion: ‖ours32 − 2nd float32 path‖/‖ours32‖ ${relError(alt, x32).toExponential(2)}`);
  const moved: Float64Array[] = [];
  for (const phase of [0, 1])
    moved.push(await inversionLoop(run64, nudge(g.f32("inversion.latents_in"), phase), ctx64, false));
  conditioning("inversion", x64, moved);
  for (const phase of [0, 1]) {
    const r = await ddimInvert(sd, {
      latents: Float32Array.from(nudge(g.f32("inversion.latents_in"), phase)),
      size,
      context: ctx32,
      steps: g.shape("inversion.timesteps")[0] as number,
    });
    const m = r.latents[r.latents.length - 1] as Float32Array;
    console.log(
      `inversion, nudge ${phase}: ours32 moves by ${relError(m, x32).toExponential(2)}, ‖ours32−ours64‖/‖ours64‖ ${relError(m, moved[phase] as Float64Array).toExponential(2)}`,
    );
  }
}
await sd.release();
