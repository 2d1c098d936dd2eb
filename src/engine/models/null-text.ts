/**
 * The loss of one null-text optimization step (Mokady et al., "Null-text Inversion", 2023, as the official
 * Photoswap code runs it: ../shared/PHOTOSWAP.md §9), with its gradient w.r.t. the unconditional context:
 *
 *   m_u = UNet(x, t, u)                       the unconditional prediction, u an input
 *   m   = m_u + g·(m_c − m_u)                 classifier-free guidance; m_c = UNet(x, t, cond) is an input
 *                                             (computed once per sampling step, without gradients)
 *   x'  = √ᾱ_prev·x̂₀(m) + √(1−ᾱ_prev)·ε̂(m)    the DDIM step (eta 0) from t to the previous timestep
 *   loss = mean((x' − z)²)                    z: the DDIM inversion's latent at the previous timestep
 *
 * The model output m is ε or v as the checkpoint predicts, converted to (x̂₀, ε̂) inside the step as the
 * scheduler does, so v-prediction checkpoints (SD 2) run the same method. The four √ᾱ coefficients and g
 * are inputs, so one compiled graph serves every step of every inversion at one latent size.
 */
import type { Tensor } from "../graph/index.js";
import { add, div, Graph, grad, mul, reduceMean, reshape, sub } from "../graph/index.js";
import { type ComputeDType, IO, type PredictionType } from "./components.js";
import type { UNetConfig } from "./config.js";
import { StoreParams, type WeightSource } from "./params.js";
import { unet } from "./unet.js";

/** Input and output names of the null-text loss graph (besides IO.sample / IO.timestep). */
export const NULL_TEXT_IO = {
  uncond: "uncond_context",
  condOut: "cond_out",
  guidance: "guidance_scale",
  sqrtAlpha: "sqrt_alpha_prod",
  sqrtOneMinusAlpha: "sqrt_one_minus_alpha_prod",
  sqrtAlphaPrev: "sqrt_alpha_prod_prev",
  sqrtOneMinusAlphaPrev: "sqrt_one_minus_alpha_prod_prev",
  target: "target",
  loss: "loss",
  dUncond: "d_uncond_context",
} as const;

export interface NullTextGraphOptions {
  /** Latent height and width. */
  height: number;
  width: number;
  prediction: PredictionType;
  dtype?: ComputeDType;
  contextLength?: number;
}

/** x̂₀ and ε̂ from a model output m at x_t (DDIMScheduler's conversion, without clipping). */
function toX0Eps(m: Tensor, x: Tensor, sa: Tensor, so: Tensor, prediction: PredictionType): [Tensor, Tensor] {
  if (prediction === "epsilon") return [div(sub(x, mul(so, m)), sa), m];
  return [sub(mul(sa, x), mul(so, m)), add(mul(sa, m), mul(so, x))];
}

export function nullTextLossGraph(store: WeightSource, c: UNetConfig, o: NullTextGraphOptions): Graph {
  const g = new Graph("null_text_loss");
  const shape = [1, c.in_channels, o.height, o.width];
  const x = g.input(IO.sample, "float32", shape);
  const timestep = g.input(IO.timestep, "float32", [1]);
  const u = g.input(NULL_TEXT_IO.uncond, "float32", [1, o.contextLength ?? 77, c.cross_attention_dim]);
  const condOut = g.input(NULL_TEXT_IO.condOut, "float32", shape);
  const target = g.input(NULL_TEXT_IO.target, "float32", shape);
  const scalar = (name: string) => reshape(g.input(name, "float32", [1]), [1, 1, 1, 1]);
  const guidance = scalar(NULL_TEXT_IO.guidance);
  const sa = scalar(NULL_TEXT_IO.sqrtAlpha);
  const so = scalar(NULL_TEXT_IO.sqrtOneMinusAlpha);
  const saPrev = scalar(NULL_TEXT_IO.sqrtAlphaPrev);
  const soPrev = scalar(NULL_TEXT_IO.sqrtOneMinusAlphaPrev);

  const p = new StoreParams(g, store, { origin: "unet", dtype: o.dtype ?? "float32" });
  const uncondOut = unet(p, c, { sample: x, timestep, context: u });
  const guided = add(uncondOut, mul(guidance, sub(condOut, uncondOut)));
  const [x0, eps] = toX0Eps(guided, x, sa, so, o.prediction);
  const prev = add(mul(saPrev, x0), mul(soPrev, eps));
  const diff = sub(prev, target);
  const loss = reduceMean(mul(diff, diff), [0, 1, 2, 3], false);
  g.output(NULL_TEXT_IO.loss, loss);
  g.output(NULL_TEXT_IO.dUncond, grad(loss, [u])[0] as Tensor);
  return g;
}
