/**
 * Whole graphs for the Stable Diffusion components: named inputs, the network, named outputs. These are
 * what the engine compiles into sessions (one per component, batch, size and variant) and what the parity
 * suite and the benchmark build; the networks themselves live in clip.ts, unet.ts and vae.ts.
 */
import type { Tensor } from "../graph/index.js";
import { add, Graph, grad, mul, reduceMean, reshape, sub } from "../graph/index.js";
import { adamCoefficientTensors, adamUpdate } from "../optim/adam.js";
import { CARRY_PREFIX } from "../runtime/carry.js";
import type { AttentionHook } from "./attention.js";
import { clipTextEncoder } from "./clip.js";
import type { TextEncoderConfig, UNetConfig, VaeConfig } from "./config.js";
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
  /** An optimizing loss graph's Adam state per trained input: `adam.m.<input name>`, `adam.v.<input name>`. */
  adamM: "adam.m.",
  adamV: "adam.v.",
  /** Its step's coefficients, [7] (optim/adam.ts, adamCoefficients). */
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

export type PredictionType = "epsilon" | "v_prediction";

export interface LossGraphOptions extends UNetGraphOptions {
  prediction: PredictionType;
  /** What to differentiate: the context, the LoRA inputs (needs loraRank), UNet weights by name. */
  wrtContext: boolean;
  wrtLora: boolean;
  wrtWeights?: (name: string) => boolean;
  /**
   * Adam inside the graph for the LoRA and weight inputs differentiated: instead of their gradients the
   * graph outputs their next values and Adam's next m and v, as carried outputs (`carry.<input>`) that
   * the session feeds back into the next run — on the device where the runtime can (runtime/session.ts).
   * The context's gradient stays an output.
   */
  optimize?: boolean;
}

export interface LossGraph {
  graph: Graph;
  lora: LoraInputs | undefined;
  /** UNet weights delivered as inputs, by checkpoint name (their gradients are `d.<name>`). */
  weights: Map<string, Tensor>;
}

/**
 * The denoising loss mean((unet(noisy, t, context) − target)²) with noisy = √ᾱ·x0 + √(1−ᾱ)·noise and
 * target = noise (epsilon) or √ᾱ·noise − √(1−ᾱ)·x0 (v_prediction), followed by its gradients.
 * √ᾱ_t and √(1−ᾱ_t) are inputs per batch item, so one graph serves every timestep.
 */
export function lossGraph(store: WeightSource, c: UNetConfig, o: LossGraphOptions): LossGraph {
  if (o.wrtLora && !o.loraRank) throw new Error("loss graph: gradients w.r.t. LoRA need a LoRA rank");
  const g = new Graph("unet_loss");
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
  });
  const lora = o.loraRank ? new LoraInputs(g, o.loraRank) : undefined;
  const noisy = add(mul(a, x0), mul(s, noise));
  const target = o.prediction === "epsilon" ? noise : sub(mul(a, noise), mul(s, x0));
  const pred = unet(p, c, { sample: noisy, timestep, context }, lora);
  const diff = sub(pred, target);
  const loss = reduceMean(mul(diff, diff), [0, 1, 2, 3], false);
  g.output(IO.loss, loss);

  const wrt: Array<[string, Tensor]> = [];
  if (o.wrtContext) wrt.push([IO.dContext, context]);
  if (o.wrtLora && lora) {
    for (const [path, m] of lora.modules) {
      wrt.push([IO.grad + loraDownName(path), m.down], [IO.grad + loraUpName(path), m.up]);
    }
  }
  for (const [name, t] of p.inputs) wrt.push([`${IO.grad}${name}`, t]);
  if (wrt.length > 0) {
    const grads = grad(
      loss,
      wrt.map(([, t]) => t),
    );
    const c = o.optimize ? adamCoefficientTensors(g.input(IO.adamCoefficients, "float32", [7])) : [];
    wrt.forEach(([name, t], i) => {
      const d = grads[i] as Tensor;
      if (!o.optimize || t === context) {
        g.output(name, d);
        return;
      }
      // The input's own name: the gradient output's without its prefix.
      const input = name.slice(IO.grad.length);
      const state = {
        p: t,
        m: g.input(IO.adamM + input, "float32", t.shape),
        v: g.input(IO.adamV + input, "float32", t.shape),
      };
      const next = adamUpdate(state, d, c);
      g.output(CARRY_PREFIX + input, next.p);
      g.output(CARRY_PREFIX + IO.adamM + input, next.m);
      g.output(CARRY_PREFIX + IO.adamV + input, next.v);
    });
  }
  return { graph: g, lora, weights: p.inputs };
}
