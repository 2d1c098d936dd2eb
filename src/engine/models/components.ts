/**
 * Whole graphs for the Stable Diffusion components: named inputs, the network, named outputs. These are
 * what the engine compiles into sessions (one per component, batch, size and variant) and what the parity
 * suite and the benchmark build; the networks themselves live in clip.ts, unet.ts and vae.ts.
 */

import { PACK_ROW } from "../graph/emit.js";
import type { Tensor } from "../graph/index.js";
import { add, Graph, grad, mul, reduceMean, reshape, sub } from "../graph/index.js";
import { ADAM_COEFFICIENTS, adamUpdate } from "../optim/adam.js";
import {
  type FlatLayout,
  flatGradient,
  flatLayout,
  flatSource,
  type TrainedSource,
} from "../optim/flat-params.js";
import { CARRY_PREFIX } from "../runtime/carry.js";
import type { AttentionHook } from "./attention.js";
import type { Checkpoint, Component } from "./checkpoint.js";
import { clipTextEncoder } from "./clip.js";
import type { TextEncoderConfig, UNetConfig, VaeConfig } from "./config.js";
import { MissingParameterError, ModelFileError } from "./errors.js";
import { LoraInputs, loraDownName, loraUpName } from "./lora.js";
import { StoreParams, type WeightSource } from "./params.js";
import { unet } from "./unet.js";
import { vaeDecode, vaeEncode, vaeLegacyName } from "./vae.js";

/** Graph input and output names, shared by the builders and the code that feeds the sessions. */
export const IO = {
  inputIds: "input_ids",
  lastHiddenState: "last_hidden_state",
  sample: "sample",
  timestep: "timestep",
  context: "encoder_hidden_states",
  unetOut: "out",
  image: "image",
  mean: "mean",
  std: "std",
  latents: "latents",
  x0: "x0",
  noise: "noise",
  sqrtAlpha: "sqrt_alpha_prod",
  sqrtOneMinusAlpha: "sqrt_one_minus_alpha_prod",
  loss: "loss",
  dContext: "d_context",
  /** Prefix of the gradient outputs: `d.<input name>` for LoRA and weight inputs. */
  grad: "d.",
  /** An optimizing loss graph's trained tensors as one flat input (optim/flat-params.ts), Adam's m and v
   *  laid out the same, and the step's coefficients (optim/adam.ts, adamCoefficients). */
  trainParams: "train.params",
  adamM: "adam.m",
  adamV: "adam.v",
  adamCoefficients: "adam.coefficients",
} as const;

export type ComputeDType = "float32" | "float16";

export function textEncoderGraph(
  store: WeightSource,
  c: TextEncoderConfig,
  batch: number,
  length = 77,
): Graph {
  const g = new Graph("text_encoder");
  const ids = g.input(IO.inputIds, "int64", [batch, length]);
  const p = new StoreParams(g, store, { origin: "text_encoder" });
  g.output(IO.lastHiddenState, clipTextEncoder(p, c, ids));
  return g;
}

export interface UNetGraphOptions {
  batch: number;
  /** Latent height and width. */
  height: number;
  width: number;
  contextLength?: number;
  dtype?: ComputeDType;
  /** Adds LoRA inputs of this rank on every attention projection. */
  loraRank?: number;
  /** UNet weights delivered as float32 inputs named as the parameter (a full fine-tune's weights). */
  weightInputs?: (name: string) => boolean;
  /** LoRA scale per batch row (`lora.scale` is [batch]): an adapter acting on some rows only. */
  loraPerRow?: boolean;
  /** Attention control: how every attention module attends (Photoswap's swaps). */
  control?: AttentionHook;
}

export function unetGraph(
  store: WeightSource,
  c: UNetConfig,
  o: UNetGraphOptions,
): { graph: Graph; lora: LoraInputs | undefined; weights: Map<string, Tensor> } {
  const g = new Graph("unet");
  const sample = g.input(IO.sample, "float32", [o.batch, c.in_channels, o.height, o.width]);
  const timestep = g.input(IO.timestep, "float32", [o.batch]);
  const context = g.input(IO.context, "float32", [o.batch, o.contextLength ?? 77, c.cross_attention_dim]);
  const p = new StoreParams(g, store, {
    origin: "unet",
    dtype: o.dtype ?? "float32",
    trainable: o.weightInputs,
  });
  const lora = o.loraRank ? new LoraInputs(g, o.loraRank, o.loraPerRow ? o.batch : undefined) : undefined;
  g.output(IO.unetOut, unet(p, c, { sample, timestep, context }, lora, o.control));
  return { graph: g, lora, weights: p.inputs };
}

export function vaeEncodeGraph(
  store: WeightSource,
  c: VaeConfig,
  height: number,
  width: number,
  dtype?: ComputeDType,
): Graph {
  const g = new Graph("vae_encode");
  const image = g.input(IO.image, "float32", [1, c.in_channels, height, width]);
  const { mean, std } = vaeEncode(
    new StoreParams(g, store, { origin: "vae", dtype, legacyName: vaeLegacyName }),
    c,
    image,
  );
  g.output(IO.mean, mean);
  g.output(IO.std, std);
  return g;
}

/** `height`/`width` are the latents' (the image is 2^(levels−1) times larger). */
export function vaeDecodeGraph(
  store: WeightSource,
  c: VaeConfig,
  batch: number,
  height: number,
  width: number,
  dtype?: ComputeDType,
): Graph {
  const g = new Graph("vae_decode");
  const latents = g.input(IO.latents, "float32", [batch, c.latent_channels, height, width]);
  g.output(
    IO.image,
    vaeDecode(new StoreParams(g, store, { origin: "vae", dtype, legacyName: vaeLegacyName }), c, latents),
  );
  return g;
}

/**
 * Builds each network's graph once at its smallest size, reading no weight bytes (an initializer's bytes
 * are read only when a session is compiled): every parameter the configs imply must be in the checkpoint,
 * with that shape and a floating-point dtype. So a checkpoint missing a tensor, or holding one of another
 * shape, is refused when it is opened, naming the file and the tensor, and not by the first job that needs
 * the network. Some tens of milliseconds for SD 1.5.
 */
export function checkNetworkWeights(ckpt: Pick<Checkpoint, "textEncoder" | "unet" | "vae">): void {
  const latent = 2 ** (ckpt.unet.config.block_out_channels.length - 1);
  const vaeScale = 2 ** (ckpt.vae.config.block_out_channels.length - 1);
  const networks: Array<[Component<unknown>, string, () => unknown]> = [
    [
      ckpt.textEncoder,
      "text encoder",
      () => textEncoderGraph(ckpt.textEncoder.weights, ckpt.textEncoder.config, 1),
    ],
    [
      ckpt.unet,
      "UNet",
      () => unetGraph(ckpt.unet.weights, ckpt.unet.config, { batch: 1, height: latent, width: latent }),
    ],
    [
      ckpt.vae,
      "VAE",
      () => vaeEncodeGraph(ckpt.vae.weights, ckpt.vae.config, latent * vaeScale, latent * vaeScale),
    ],
    [ckpt.vae, "VAE", () => vaeDecodeGraph(ckpt.vae.weights, ckpt.vae.config, 1, latent, latent)],
  ];
  for (const [component, what, build] of networks) {
    try {
      build();
    } catch (err) {
      if (!(err instanceof MissingParameterError)) throw err;
      throw new ModelFileError(
        component.weightsFile,
        `has no tensor "${err.parameter}", which the ${what} its config describes needs (a checkpoint of another architecture, or a damaged or partial file)`,
      );
    }
  }
}

export type PredictionType = "epsilon" | "v_prediction";

export interface LossGraphOptions extends UNetGraphOptions {
  prediction: PredictionType;
  /** What to differentiate: the context, the LoRA inputs (needs loraRank), UNet weights by name. */
  wrtContext: boolean;
  wrtLora: boolean;
  wrtWeights?: (name: string) => boolean;
  /**
   * Adam inside the graph for the LoRA and weight tensors differentiated: they are one flat input
   * (`train.params`), and instead of their gradients the graph outputs its next value and Adam's next m and
   * v, as carried outputs (`carry.<input>`) that the session feeds back into the next run — on the device
   * where the runtime can (runtime/carry.ts). The context's gradient stays an output.
   */
  optimize?: boolean;
}

export interface LossGraph {
  graph: Graph;
  lora: LoraInputs | undefined;
  /** UNet weights delivered as inputs, by checkpoint name (their gradients are `d.<name>`). */
  weights: Map<string, Tensor>;
  /** With `optimize`: where each trained tensor sits in the flat `train.params`. */
  trained?: FlatLayout;
}

/**
 * The denoising loss mean((unet(noisy, t, context) − target)²) with noisy = √ᾱ·x0 + √(1−ᾱ)·noise and
 * target = noise (epsilon) or √ᾱ·noise − √(1−ᾱ)·x0 (v_prediction), followed by its gradients.
 * √ᾱ_t and √(1−ᾱ_t) are inputs per batch item, so one graph serves every timestep.
 */
export function lossGraph(store: WeightSource, c: UNetConfig, o: LossGraphOptions): LossGraph {
  if (o.wrtLora && !o.loraRank) throw new Error("loss graph: gradients w.r.t. LoRA need a LoRA rank");
  if (o.optimize) return optimizingLossGraph(store, c, o);
  const g = new Graph("unet_loss");
  const f = lossForward(g, store, c, o);
  const wrt = [
    ...(o.wrtContext ? [[IO.dContext, f.context] as const] : []),
    ...trainedTensors(f, o).map(([name, t]) => [IO.grad + name, t] as const),
  ];
  if (wrt.length > 0) {
    const grads = grad(
      f.loss,
      wrt.map(([, t]) => t),
    );
    wrt.forEach(([name], i) => {
      g.output(name, grads[i] as Tensor);
    });
  }
  return { graph: g, lora: f.lora, weights: f.p.inputs };
}

/**
 * The loss graph with Adam inside: the trained tensors are pieces of one flat input (optim/flat-params.ts)
 * — found by a first, forward-only build that records what the UNet asks for — and Adam updates that flat
 * tensor with the gradients laid out the same way.
 */
function optimizingLossGraph(store: WeightSource, c: UNetConfig, o: LossGraphOptions): LossGraph {
  const probe = new Graph("trained_tensors");
  const found: { name: string; shape: readonly number[] }[] = [];
  // Names and shapes are all the probe needs: it reads no weight (the real build checks them).
  const shapes: WeightSource = {
    has: (name) => store.has(name),
    data: (name, request) => {
      if (!request?.shape) throw new Error(`loss graph: weight ${name} requested without a shape`);
      return {
        dtype: request.dtype ?? "float32",
        shape: request.shape,
        bytes: () => {
          throw new Error("loss graph: the trained tensors' probe reads no weight");
        },
      };
    },
  };
  lossForward(probe, shapes, c, o, (name, shape) => {
    found.push({ name, shape });
    return probe.input(name, "float32", shape);
  });
  const layout = flatLayout(found);
  const g = new Graph("unet_loss");
  const flat = g.input(IO.trainParams, "float32", [layout.rows, PACK_ROW]);
  // The pieces and their gradients in the UNet's compute dtype: one Cast each way for the flat tensor.
  const dtype = o.dtype ?? "float32";
  const f = lossForward(g, store, c, o, flatSource(flat, layout, dtype));
  const trained = trainedTensors(f, o);
  const grads = grad(f.loss, [...(o.wrtContext ? [f.context] : []), ...trained.map(([, t]) => t)]);
  if (o.wrtContext) g.output(IO.dContext, grads[0] as Tensor);
  const offset = o.wrtContext ? 1 : 0;
  const gradient = flatGradient(
    layout,
    new Map(trained.map(([name], i) => [name, grads[i + offset] as Tensor])),
    dtype,
  );
  const state = {
    p: flat,
    m: g.input(IO.adamM, "float32", flat.shape),
    v: g.input(IO.adamV, "float32", flat.shape),
  };
  const next = adamUpdate(state, gradient, g.input(IO.adamCoefficients, "float32", [ADAM_COEFFICIENTS]));
  g.output(CARRY_PREFIX + IO.trainParams, next.p);
  g.output(CARRY_PREFIX + IO.adamM, next.m);
  g.output(CARRY_PREFIX + IO.adamV, next.v);
  return { graph: g, lora: f.lora, weights: f.p.inputs, trained: layout };
}

/** The loss's forward part in `g`; `source` gives the trained tensors (LoRA when differentiated, weights). */
function lossForward(
  g: Graph,
  store: WeightSource,
  c: UNetConfig,
  o: LossGraphOptions,
  source?: TrainedSource,
) {
  const shape = [o.batch, c.in_channels, o.height, o.width];
  const x0 = g.input(IO.x0, "float32", shape);
  const noise = g.input(IO.noise, "float32", shape);
  const timestep = g.input(IO.timestep, "float32", [o.batch]);
  const a = reshape(g.input(IO.sqrtAlpha, "float32", [o.batch]), [o.batch, 1, 1, 1]);
  const s = reshape(g.input(IO.sqrtOneMinusAlpha, "float32", [o.batch]), [o.batch, 1, 1, 1]);
  const context = g.input(IO.context, "float32", [o.batch, o.contextLength ?? 77, c.cross_attention_dim]);
  // In a float16 graph the UNet computes in float16; the loss and every gradient output stay float32.
  const p = new StoreParams(g, store, {
    origin: "unet",
    trainable: o.wrtWeights,
    dtype: o.dtype ?? "float32",
    ...(source ? { trainedSource: source } : {}),
  });
  const lora = o.loraRank
    ? new LoraInputs(g, o.loraRank, undefined, o.wrtLora ? source : undefined)
    : undefined;
  const noisy = add(mul(a, x0), mul(s, noise));
  const target = o.prediction === "epsilon" ? noise : sub(mul(a, noise), mul(s, x0));
  const pred = unet(p, c, { sample: noisy, timestep, context }, lora);
  const diff = sub(pred, target);
  const loss = reduceMean(mul(diff, diff), [0, 1, 2, 3], false);
  g.output(IO.loss, loss);
  return { loss, context, p, lora };
}

/** The tensors a loss graph trains, by input name: the LoRA's (when differentiated), then the weights'. */
function trainedTensors(f: ReturnType<typeof lossForward>, o: LossGraphOptions): Array<[string, Tensor]> {
  const out: Array<[string, Tensor]> = [];
  if (o.wrtLora && f.lora) {
    for (const [path, m] of f.lora.modules) out.push([loraDownName(path), m.down], [loraUpName(path), m.up]);
  }
  for (const [name, t] of f.p.inputs) out.push([name, t]);
  return out;
}
