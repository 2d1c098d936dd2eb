/**
 * LoRA on the UNet's attention projections (to_q, to_k, to_v, to_out.0 of every attn1/attn2), as peft
 * applies it for diffusers' LoRA training: y = W·x + (alpha/rank)·B·(A·x), A [rank, in] ("down"),
 * B [out, rank] ("up"). A and B are graph inputs, so one compiled session serves every LoRA state.
 */
import { UserFacingError } from "../../errors.js";
import { mulberry32 } from "../diffusion/rng.js";
import type { Graph, Tensor } from "../graph/index.js";
import { add, cast, linear, mul, reshape } from "../graph/index.js";
import type { TrainedSource } from "../optim/flat-params.js";
import type { HostTensor } from "../runtime/index.js";
import type { TensorFile } from "./tensor-file.js";

export interface LoraModule {
  down: Float32Array;
  up: Float32Array;
  rank: number;
  alpha: number;
  inF: number;
  outF: number;
}

/** Module path (e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") → its adapter. */
export type LoraWeights = Map<string, LoraModule>;

/** What the attention builders call on each adaptable projection: returns y plus the adapter's delta. */
export interface LoraHook {
  apply(path: string, x: Tensor, y: Tensor, inF: number, outF: number): Tensor;
}

const TARGET = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

/** Whether a module path is one LoRA adapts. */
export function isLoraTarget(path: string): boolean {
  return TARGET.test(path);
}

export const loraDownName = (path: string) => `lora.${path}.down`;
export const loraUpName = (path: string) => `lora.${path}.up`;
export const LORA_SCALE = "lora.scale";

/** Graph inputs for one rank; records each adapted module so feeds and gradients can be matched to it. */
export class LoraInputs implements LoraHook {
  readonly modules = new Map<string, { down: Tensor; up: Tensor; inF: number; outF: number }>();
  /** alpha / rank, an input so one session serves every alpha ([rows] with a scale per batch row). */
  readonly scale: Tensor;

  /** `rows`: one scale per batch row (so the adapter can act on some rows only, e.g. Photoswap's targets). */
  /** `source`: where the adapter's tensors come from (default: a graph input each; a training graph with
   *  Adam inside slices them from one flat input, optim/flat-params.ts). */
  constructor(
    readonly graph: Graph,
    readonly rank: number,
    readonly rows?: number,
    private readonly source: TrainedSource = (name, shape) => graph.input(name, "float32", shape),
  ) {
    if (!Number.isInteger(rank) || rank < 1)
      throw new Error(`LoRA rank must be a positive integer, got ${rank}`);
    this.scale = graph.input(LORA_SCALE, "float32", [rows ?? 1]);
  }

  apply(path: string, x: Tensor, y: Tensor, inF: number, outF: number): Tensor {
    if (!isLoraTarget(path)) return y;
    if (this.modules.has(path)) throw new Error(`LoRA: module ${path} adapted twice`);
    const down = this.source(loraDownName(path), [this.rank, inF]);
    const up = this.source(loraUpName(path), [outF, this.rank]);
    this.modules.set(path, { down, up, inF, outF });
    const lowered = (t: Tensor) => cast(t, x.dtype);
    const delta = linear(linear(x, lowered(down)), lowered(up));
    const scale = this.rows
      ? reshape(this.scale, [this.rows, ...delta.shape.slice(1).map(() => 1)])
      : this.scale;
    return add(y, mul(delta, lowered(scale)));
  }

  /**
   * Feeds for a LoRA state; every adapted module must be present with this rank. A graph with a scale
   * per row takes `rowWeights` (one factor per batch row, e.g. 0 where the adapter must not act).
   */
  feeds(weights: LoraWeights, rowWeights?: readonly number[]): Record<string, HostTensor> {
    const out: Record<string, HostTensor> = {};
    let scale: number | undefined;
    for (const [path, m] of this.modules) {
      const w = weights.get(path);
      if (!w) throw new Error(`LoRA weights lack module ${path}`);
      if (w.rank !== this.rank || w.inF !== m.inF || w.outF !== m.outF) {
        throw new Error(
          `LoRA module ${path}: rank ${w.rank}, ${w.inF}→${w.outF}; the graph expects rank ${this.rank}, ${m.inF}→${m.outF}`,
        );
      }
      const s = w.alpha / w.rank;
      if (scale !== undefined && s !== scale) throw new Error("LoRA weights mix different alpha/rank scales");
      scale = s;
      out[loraDownName(path)] = { dtype: "float32", shape: [this.rank, m.inF], data: w.down };
      out[loraUpName(path)] = { dtype: "float32", shape: [m.outF, this.rank], data: w.up };
    }
    if (weights.size !== this.modules.size) {
      const extra = [...weights.keys()].find((k) => !this.modules.has(k));
      throw new Error(`LoRA weights hold module ${extra}, which this UNet does not adapt`);
    }
    if (this.rows !== undefined ? rowWeights?.length !== this.rows : rowWeights !== undefined) {
      throw new Error(
        `LoRA: ${rowWeights?.length ?? "no"} row weights for a graph with ${this.rows ?? "one shared"} scale(s)`,
      );
    }
    const s = scale ?? 0;
    out[LORA_SCALE] = {
      dtype: "float32",
      shape: [this.rows ?? 1],
      data: rowWeights ? Float32Array.from(rowWeights, (w) => w * s) : Float32Array.of(s),
    };
    return out;
  }
}

/**
 * A fresh adapter per module, initialized as peft does: A ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in),
 * B = 0, so the adapted UNet starts out computing exactly the frozen one.
 */
export function newLoraWeights(
  modules: ReadonlyArray<{ path: string; inF: number; outF: number }>,
  rank: number,
  alpha: number,
  seed: number,
): LoraWeights {
  if (!Number.isInteger(rank) || rank < 1)
    throw new Error(`LoRA rank must be a positive integer, got ${rank}`);
  if (!(alpha > 0)) throw new Error(`LoRA alpha must be positive, got ${alpha}`);
  const rand = mulberry32(seed);
  const out: LoraWeights = new Map();
  for (const m of modules) {
    const bound = 1 / Math.sqrt(m.inF);
    const down = new Float32Array(rank * m.inF);
    for (let i = 0; i < down.length; i++) down[i] = (2 * rand() - 1) * bound;
    out.set(m.path, { down, up: new Float32Array(m.outF * rank), rank, alpha, inF: m.inF, outF: m.outF });
  }
  return out;
}

/** The modules LoRA adapts in a UNet weight store: every target projection's weight, with its shape. */
export function loraTargets(
  names: readonly string[],
  shapeOf: (name: string) => readonly number[],
): Array<{ path: string; inF: number; outF: number }> {
  const out: Array<{ path: string; inF: number; outF: number }> = [];
  for (const name of names) {
    if (!name.endsWith(".weight")) continue;
    const path = name.slice(0, -".weight".length);
    if (!isLoraTarget(path)) continue;
    const [outF, inF] = shapeOf(name) as [number, number];
    out.push({ path, inF, outF });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** A LoRA file this engine cannot apply as it is: the message names the file and what is wrong. */
export class LoraFileError extends UserFacingError {
  override name = "LoraFileError";
  constructor(origin: string, problem: string) {
    super(`LoRA file ${origin}: ${problem}`);
  }
}

type Part = "down" | "up" | "alpha";

/**
 * The ways LoRA files name an adapter's tensors, each giving (module key, part). peft and diffusers
 * (`…attn1.to_q.lora_A.weight` [rank, in], `lora_B` [out, rank]; optionally under `unet.` or peft's
 * `base_model.model.`, and with peft's adapter name `default`); diffusers' older files: 0.21–0.24's
 * LoRACompatibleLinear layers (`unet.…attn1.to_q.lora.down.weight`, training_utils' unet_lora_state_dict)
 * and attention processors (`…attn1.processor.to_q_lora.down.weight`); kohya's sd-scripts (`lora_unet_<module path with
 * underscores>.lora_down.weight`, `.lora_up.weight` and a per-module `.alpha`).
 */
const NAMINGS: ReadonlyArray<{ re: RegExp; key: (m: RegExpMatchArray) => [string, Part] }> = [
  {
    re: /^(?:unet\.|base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$/,
    key: (m) => [m[1] as string, m[2] === "A" ? "down" : "up"],
  },
  {
    re: /^(?:unet\.)?(.+)\.lora\.(down|up)\.weight$/,
    key: (m) => [m[1] as string, m[2] as Part],
  },
  {
    re: /^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/,
    key: (m) => [`${m[1]}.${m[2] === "to_out" ? "to_out.0" : m[2]}`, m[3] as Part],
  },
  {
    re: /^(lora_unet_.+)\.(lora_down|lora_up)\.weight$/,
    key: (m) => [m[1] as string, m[2] === "lora_down" ? "down" : "up"],
  },
  { re: /^(lora_unet_.+)\.alpha$/, key: (m) => [m[1] as string, "alpha"] },
];

/** kohya writes a module path with every dot as an underscore. */
const kohyaKey = (path: string) => `lora_unet_${path.replaceAll(".", "_")}`;

export interface LoraFileOptions {
  /** peft's lora_alpha (adapter_config.json): wins over what the file says; default the file's, else rank. */
  alpha?: number;
  /** Strip this prefix from every tensor name first (a test fixture's namespace). */
  prefix?: string;
}

/**
 * Reads a LoRA file onto this UNet's adaptable modules (`targets`, from `loraTargets`). Every tensor must
 * belong to one of them: text-encoder adapters, adapters on other layers and unknown tensors are refused
 * by name rather than silently left out, since leaving them out would change what the LoRA does.
 */
export function loraFromSafetensors(
  st: Pick<TensorFile, "path" | "metadata" | "tensors" | "readFloat32">,
  targets: ReadonlyArray<{ path: string; inF: number; outF: number }>,
  o: LoraFileOptions = {},
): LoraWeights {
  const origin = st.path;
  const byKey = new Map<string, { path: string; inF: number; outF: number }>();
  for (const t of targets) {
    byKey.set(t.path, t);
    byKey.set(kohyaKey(t.path), t);
  }
  const found = new Map<string, Partial<Record<Part, string>>>();
  for (const full of st.tensors.keys()) {
    if (o.prefix !== undefined && !full.startsWith(o.prefix)) continue;
    const name = o.prefix ? full.slice(o.prefix.length) : full;
    const hit = NAMINGS.map((n) => ({ n, m: name.match(n.re) })).find((x) => x.m);
    if (!hit?.m) {
      const what = /^(lora_te|text_encoder|te_)/.test(name) ? "a text-encoder adapter" : "not a LoRA tensor";
      throw new LoraFileError(
        origin,
        `tensor "${full}" is ${what}; only UNet attention adapters are applied`,
      );
    }
    const [key, part] = hit.n.key(hit.m);
    const target = byKey.get(key);
    if (!target) {
      throw new LoraFileError(
        origin,
        `tensor "${full}" adapts ${key}, which is not one of this UNet's ${targets.length} attention projections (to_q, to_k, to_v, to_out.0 of attn1/attn2)`,
      );
    }
    const parts = found.get(target.path) ?? {};
    if (parts[part]) throw new LoraFileError(origin, `module ${target.path} has two ${part} tensors`);
    parts[part] = full;
    found.set(target.path, parts);
  }
  if (found.size === 0) throw new LoraFileError(origin, "holds no LoRA tensors");
  const config = adapterConfig(st.metadata, origin);
  const fileAlpha =
    config.alpha ?? Number(st.metadata.lora_alpha ?? st.metadata.ss_network_alpha ?? Number.NaN);
  const out: LoraWeights = new Map();
  for (const t of targets) {
    const parts = found.get(t.path);
    if (!parts) continue;
    if (!parts.down || !parts.up)
      throw new LoraFileError(
        origin,
        `module ${t.path} lacks its ${parts.down ? "up (B)" : "down (A)"} matrix`,
      );
    const down = matrix(st, parts.down, origin);
    const up = matrix(st, parts.up, origin);
    const rank = down.shape[0];
    if (down.shape[1] !== t.inF || up.shape[0] !== t.outF || up.shape[1] !== rank) {
      throw new LoraFileError(
        origin,
        `module ${t.path}: down [${down.shape}] and up [${up.shape}] do not fit a ${t.inF}→${t.outF} projection (down must be [rank, ${t.inF}], up [${t.outF}, rank])`,
      );
    }
    const alpha =
      o.alpha ??
      (parts.alpha ? (st.readFloat32(parts.alpha)[0] as number) : undefined) ??
      config.moduleAlpha(t.path) ??
      (Number.isFinite(fileAlpha) ? fileAlpha : rank);
    if (!(alpha > 0))
      throw new LoraFileError(origin, `module ${t.path} has alpha ${alpha}; it must be positive`);
    // rsLoRA scales by alpha/√rank: the same as alpha·√rank over rank.
    const scaled = config.rslora ? alpha * Math.sqrt(rank) : alpha;
    out.set(t.path, { down: down.data, up: up.data, rank, alpha: scaled, inF: t.inF, outF: t.outF });
  }
  const { rank, alpha } = oneScale(out);
  // peft adapts only the modules a file names (an adapter on attn2's to_k/to_v, or on some blocks); the
  // engine's graphs adapt every target, so each other one gets an adapter with B = 0, which adds nothing.
  for (const t of targets) {
    if (out.has(t.path)) continue;
    out.set(t.path, {
      down: new Float32Array(rank * t.inF),
      up: new Float32Array(t.outF * rank),
      rank,
      alpha,
      inF: t.inF,
      outF: t.outF,
    });
  }
  return out;
}

/** The metadata key under which diffusers (≥ 0.35) saves an adapter's peft LoraConfig, as JSON. */
const ADAPTER_METADATA = "lora_adapter_metadata";

/**
 * What diffusers' loader builds the adapter from when the file carries its LoraConfig (save_lora_weights'
 * `unet_lora_adapter_metadata`; keys under the component's name, `unet.lora_alpha`): `lora_alpha`,
 * `alpha_pattern` (per-module alphas; a key matches a module path ending in it, as peft's
 * get_pattern_key) and `use_rslora` (scale alpha/√rank). Ignoring them would apply another scale.
 */
function adapterConfig(
  metadata: Readonly<Record<string, string>>,
  origin: string,
): { alpha?: number; moduleAlpha: (path: string) => number | undefined; rslora: boolean } {
  const raw = metadata[ADAPTER_METADATA];
  if (raw === undefined) return { moduleAlpha: () => undefined, rslora: false };
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new LoraFileError(origin, `its ${ADAPTER_METADATA} metadata is not JSON`);
  }
  const config = (json ?? {}) as Record<string, unknown>;
  const get = (key: string) => config[`unet.${key}`] ?? config[key];
  const alpha = get("lora_alpha");
  const pattern = Object.entries((get("alpha_pattern") ?? {}) as Record<string, unknown>).map(
    ([key, value]) => {
      try {
        return { re: new RegExp(`^(?:.*\\.)?(?:${key})$`), value: Number(value) };
      } catch {
        throw new LoraFileError(origin, `its alpha_pattern key ${JSON.stringify(key)} is not a pattern`);
      }
    },
  );
  if (get("use_dora") === true)
    throw new LoraFileError(origin, "is a DoRA adapter (use_dora); only LoRA adapters are applied");
  return {
    alpha: typeof alpha === "number" ? alpha : undefined,
    moduleAlpha: (path) => pattern.find((p) => p.re.test(path))?.value,
    rslora: get("use_rslora") === true,
  };
}

/**
 * The graphs take one rank and one scale (alpha/rank) for every module, but files may vary both per module
 * (kohya's per-module `.alpha`, peft's rank_pattern/alpha_pattern), which diffusers applies module by
 * module. Such adapters become one of the largest rank with scale 1, each module's exactly: A padded with
 * zero rows, B with zero columns and multiplied by its own alpha/rank. Uniform ones are kept as they are.
 */
function oneScale(modules: LoraWeights): { rank: number; alpha: number } {
  const all = [...modules.values()];
  const first = all[0] as LoraModule;
  if (all.every((m) => m.rank === first.rank && m.alpha === first.alpha)) return first;
  const rank = Math.max(...all.map((m) => m.rank));
  for (const [path, m] of modules) {
    const down = new Float32Array(rank * m.inF);
    down.set(m.down);
    const up = new Float32Array(m.outF * rank);
    const s = m.alpha / m.rank;
    for (let o = 0; o < m.outF; o++)
      for (let r = 0; r < m.rank; r++) up[o * rank + r] = (m.up[o * m.rank + r] as number) * s;
    modules.set(path, { ...m, down, up, rank, alpha: rank });
  }
  return { rank, alpha: rank };
}

function matrix(
  st: Pick<TensorFile, "tensors" | "readFloat32">,
  name: string,
  origin: string,
): { shape: [number, number]; data: Float32Array } {
  const shape = st.tensors.get(name)?.shape ?? [];
  if (shape.length !== 2)
    throw new LoraFileError(
      origin,
      `tensor "${name}" is [${shape}], not a matrix (only linear adapters are applied)`,
    );
  return { shape: [shape[0] as number, shape[1] as number], data: st.readFloat32(name) };
}

/**
 * Several adapters as one: Σ_i (α_i/r_i)·B_i·A_i = [s_1·B_1 … s_n·B_n]·[A_1; …; A_n], an adapter of rank
 * Σ r_i with alpha = rank (scale 1). Every adapter must cover the same modules.
 */
export function concatLora(list: readonly LoraWeights[]): LoraWeights {
  const [first] = list;
  if (!first) throw new Error("concatLora: no adapters");
  if (list.length === 1) return first;
  const out: LoraWeights = new Map();
  for (const [path, m0] of first) {
    const parts = list.map((l) => {
      const m = l.get(path);
      if (!m || m.inF !== m0.inF || m.outF !== m0.outF || l.size !== first.size)
        throw new Error(`concatLora: the adapters do not cover the same modules (${path})`);
      return m;
    });
    const rank = parts.reduce((a, m) => a + m.rank, 0);
    const down = new Float32Array(rank * m0.inF);
    const up = new Float32Array(m0.outF * rank);
    let at = 0;
    for (const m of parts) {
      down.set(m.down, at * m0.inF);
      const s = m.alpha / m.rank;
      for (let o = 0; o < m0.outF; o++)
        for (let r = 0; r < m.rank; r++) up[o * rank + at + r] = (m.up[o * m.rank + r] as number) * s;
      at += m.rank;
    }
    out.set(path, { down, up, rank, alpha: rank, inF: m0.inF, outF: m0.outF });
  }
  return out;
}
