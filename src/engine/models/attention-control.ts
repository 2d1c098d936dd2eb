/**
 * Photoswap's attention control (eric-ai-lab/photoswap on Prompt-to-Prompt; ../shared/PHOTOSWAP.md §1–§6)
 * as an AttentionHook on our UNet: the swaps are graph INPUTS, so one compiled session serves every step
 * and every request, and the cross-attention maps the local blend reads are graph OUTPUTS.
 *
 * Batch layout, with K target rows (K = 1 is the official [uncond_src, uncond_tgt, cond_src, cond_tgt]):
 *   rows 0 … K       unconditional: the source, then the K targets
 *   rows K+1 … 2K+1  conditional:   the source, then the K targets
 * Nothing ever changes a source row. Per target row and step the host switches:
 *   φ  (`swap.phi`, bool [B])        q, k, v of every self-attention ← its half's source row (both halves);
 *   M  (`swap.self_map`, bool [B])   q, k of the self-attention layers with ≤ `maxTokens` query tokens ←
 *                                    the source's (cond rows; the host sets it where φ is on as well), so
 *                                    the softmax map is the source's and the values stay the target's;
 *   A  (`swap.cross_gate`, bool [B, 77], `swap.cross_mapper`, int64 [77])   in every cross-attention,
 *                                    target token j's map ← the source's map of token mapper[j] where the
 *                                    gate is on (w_i·a_j of §5), no renormalization.
 * The switches are exact selections (Where), so the swapped rows equal what the official code computes
 * by copying tensors. Copying q and k (rather than the probabilities) lets self-attention keep the fused
 * kernel: softmax(q_src·k_srcᵀ) in a target row is the source row's map, bit for bit.
 *
 * The local blend's maps (`swap.blend_map.<g>`, float32 [K+1, Nq, S]): for each conditional row and each
 * of the S word sets (`swap.blend_words`, float32 [K+1, S, 77], 1 on the words' tokens), the post-swap
 * cross-attention probabilities of the blend layers summed over heads, layers and the words' tokens, one
 * output per layer size g (one for the SD layout, where the blend layers share a level; a UNet with one
 * layer per block mixes levels, which the official code cannot do, and the host resizes them).
 */
import type { Graph, Tensor } from "../graph/index.js";
import {
  add,
  attendValues,
  attention,
  attentionProbs,
  cast,
  gather,
  matmul,
  reduceSum,
  reshape,
  slice,
  transpose,
  where,
} from "../graph/index.js";
import type { LatentSize } from "../index.js";
import type { AttentionHook } from "./attention.js";
import type { UNetConfig } from "./config.js";
import { perLevel } from "./config.js";
import { CROSS_DOWN, CROSS_UP } from "./unet.js";

export type AttentionPlace = "down" | "mid" | "up";

export interface AttentionLayer {
  /** Module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2". */
  name: string;
  place: AttentionPlace;
  /** UNet level (0 = the latent's resolution). */
  level: number;
  cross: boolean;
  /** The layer's spatial size (its query tokens are height × width). */
  height: number;
  width: number;
}

/**
 * The spatial size at each UNet level for a latent of `size`: each down-sampler is a stride-2 3×3 conv
 * with `downsample_padding` on every side (0: one row/column at the bottom/right, as resnet.ts builds it).
 */
export function unetLevelSizes(c: UNetConfig, size: LatentSize): Array<[number, number]> {
  const pad = c.downsample_padding === 0 ? 1 : 2 * c.downsample_padding;
  const down = (n: number) => Math.floor((n + pad - 3) / 2) + 1;
  const out: Array<[number, number]> = [[size.height, size.width]];
  for (let i = 1; i < c.block_out_channels.length; i++) {
    const [h, w] = out[i - 1] as [number, number];
    out.push([down(h), down(w)]);
  }
  return out;
}

/** Every attention module of the UNet (attn1 = self, attn2 = cross), in the order a forward pass calls them. */
export function attentionLayers(c: UNetConfig, size: LatentSize): AttentionLayer[] {
  const levels = c.block_out_channels.length;
  const sizes = unetLevelSizes(c, size);
  const tLayers = perLevel(c.transformer_layers_per_block, levels);
  const out: AttentionLayer[] = [];
  const block = (prefix: string, place: AttentionPlace, level: number) => {
    const [height, width] = sizes[level] as [number, number];
    for (let k = 0; k < (tLayers[level] as number); k++) {
      for (const cross of [false, true]) {
        const name = `${prefix}.transformer_blocks.${k}.attn${cross ? 2 : 1}`;
        out.push({ name, place, level, cross, height, width });
      }
    }
  };
  for (let i = 0; i < levels; i++) {
    if (c.down_block_types[i] !== CROSS_DOWN) continue;
    for (let j = 0; j < c.layers_per_block; j++) block(`down_blocks.${i}.attentions.${j}`, "down", i);
  }
  block("mid_block.attentions.0", "mid", levels - 1);
  for (let i = 0; i < levels; i++) {
    if (c.up_block_types[i] !== CROSS_UP) continue;
    for (let j = 0; j <= c.layers_per_block; j++)
      block(`up_blocks.${i}.attentions.${j}`, "up", levels - 1 - i);
  }
  return out;
}

/**
 * The official code's 32² token limit (which self-attention maps it stores, and which layers the M swap
 * touches), made resolution-independent as the golden fixtures do (PHOTOSWAP.md §11): the token count one
 * UNet level below the latent, which is exactly 32² for a 64×64 latent.
 */
export function storeMaxTokens(c: UNetConfig, size: LatentSize): number {
  const sizes = unetLevelSizes(c, size);
  const [h, w] = (sizes[1] ?? sizes[0]) as [number, number];
  return h * w;
}

/**
 * The layers whose maps the local blend reads: literally `down_cross[2:4] + up_cross[:3]` of the official
 * LocalBlend, over the stored (≤ maxTokens) cross-attention layers of the down and up blocks in call order.
 * For the SD layout these are down_blocks.2's two and up_blocks.1's three.
 */
export function blendLayers(layers: readonly AttentionLayer[], maxTokens: number): AttentionLayer[] {
  const stored = (place: AttentionPlace) =>
    layers.filter((l) => l.cross && l.place === place && l.height * l.width <= maxTokens);
  return [...stored("down").slice(2, 4), ...stored("up").slice(0, 3)];
}

export const SWAP_IO = {
  phi: "swap.phi",
  selfMap: "swap.self_map",
  crossGate: "swap.cross_gate",
  crossMapper: "swap.cross_mapper",
  blendWords: "swap.blend_words",
  /** Prefix of the blend maps, one per layer size: `swap.blend_map.0`, … */
  blendMap: "swap.blend_map.",
  /** Prefix of a probed module's output: `probe.<module path>`. */
  probe: "probe.",
} as const;

export interface SwapControlOptions {
  /** Target rows K; the batch is 2(K+1). */
  targets: number;
  size: LatentSize;
  /** Word sets the local blend reads (one per subject); 0 leaves the blend outputs out. */
  subjects: number;
  /** Modules whose output (after to_out) becomes the graph output `probe.<path>` (per-layer checks). */
  probes?: (path: string) => boolean;
}

/** The controlled attention of one graph; give it to unet(), then call finish() to add its outputs. */
export class SwapControl implements AttentionHook {
  readonly batch: number;
  readonly layers: ReadonlyMap<string, AttentionLayer>;
  readonly maxTokens: number;
  /** The layers feeding the blend maps. */
  readonly blend: readonly AttentionLayer[];
  /**
   * One per blend-layer size, in the order of `swap.blend_map.<g>`: its size and how many (layer, head)
   * maps it sums (the official mean over heads·layers divides the total by their sum).
   */
  readonly blendGroups: Array<{ size: LatentSize; heads: number }> = [];
  private inputs?: { phi: Tensor; selfMap: Tensor; crossGate: Tensor; mapper: Tensor; words?: Tensor };
  private sourceRows?: Tensor;
  private readonly blendSums: Tensor[] = [];
  private readonly probed = new Map<string, Tensor>();

  constructor(
    c: UNetConfig,
    private readonly o: SwapControlOptions,
  ) {
    if (!Number.isInteger(o.targets) || o.targets < 1)
      throw new Error(`attention control: targets must be a positive integer, got ${o.targets}`);
    this.batch = 2 * (o.targets + 1);
    const all = attentionLayers(c, o.size);
    this.layers = new Map(all.map((l) => [l.name, l]));
    this.maxTokens = storeMaxTokens(c, o.size);
    this.blend = o.subjects > 0 ? blendLayers(all, this.maxTokens) : [];
    if (o.subjects > 0 && this.blend.length === 0) {
      throw new Error(
        `attention control: this UNet at ${o.size.height}×${o.size.width} latents has no cross-attention layers for the local blend`,
      );
    }
    for (const l of this.blend) {
      if (!this.blendGroups.some((g) => g.size.height === l.height && g.size.width === l.width))
        this.blendGroups.push({ size: { height: l.height, width: l.width }, heads: 0 });
    }
  }

  attend(
    path: string,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: { heads: number; scale: number; cross: boolean },
  ): Tensor {
    const layer = this.layers.get(path);
    const tokens = q.shape[1] as number;
    if (!layer || layer.cross !== o.cross || layer.height * layer.width !== tokens) {
      throw new Error(
        `attention control: module ${path} (${tokens} tokens) is not in the layer table for ${this.o.size.height}×${this.o.size.width} latents`,
      );
    }
    if (q.shape[0] !== this.batch)
      throw new Error(`attention control: ${path} has batch ${q.shape[0]}, expected ${this.batch}`);
    const io = this.graphInputs(q.graph);
    const fromSource = (t: Tensor) => gather(t, this.sources(q.graph), 0);
    if (!o.cross) {
      const rows = (m: Tensor) => reshape(m, [this.batch, 1, 1]);
      const qk = rows(tokens <= this.maxTokens ? io.selfMap : io.phi);
      const phi = rows(io.phi);
      const attend = { heads: o.heads, scale: o.scale };
      return attention(
        where(qk, fromSource(q), q),
        where(qk, fromSource(k), k),
        where(phi, fromSource(v), v),
        attend,
      );
    }
    const probs = attentionProbs(q, k, { heads: o.heads, scale: o.scale });
    const mapped = gather(fromSource(probs), io.mapper, 3);
    const gate = reshape(io.crossGate, [this.batch, 1, 1, probs.shape[3] as number]);
    const swapped = where(gate, mapped, probs);
    if (this.blend.some((l) => l.name === path)) this.addToBlend(layer, swapped, o.heads);
    return attendValues(swapped, v);
  }

  observe(path: string, out: Tensor): void {
    if (this.o.probes?.(path)) this.probed.set(path, out);
  }

  /** Adds the outputs: the blend maps (with subjects) and the probes. */
  finish(g: Graph): void {
    this.blendGroups.forEach((_, i) => {
      const sum = this.blendSums[i];
      if (!sum) throw new Error("attention control: the UNet never called the blend layers");
      g.output(SWAP_IO.blendMap + i, sum);
    });
    for (const [path, t] of this.probed) g.output(SWAP_IO.probe + path, cast(t, "float32"));
  }

  private graphInputs(g: Graph) {
    if (!this.inputs) {
      this.inputs = {
        phi: g.input(SWAP_IO.phi, "bool", [this.batch]),
        selfMap: g.input(SWAP_IO.selfMap, "bool", [this.batch]),
        crossGate: g.input(SWAP_IO.crossGate, "bool", [this.batch, 77]),
        mapper: g.input(SWAP_IO.crossMapper, "int64", [77]),
        ...(this.o.subjects > 0
          ? { words: g.input(SWAP_IO.blendWords, "float32", [this.o.targets + 1, this.o.subjects, 77]) }
          : {}),
      };
    }
    return this.inputs;
  }

  /** Each row's source row: row 0 for the unconditional half, row K+1 for the conditional one. */
  private sources(g: Graph): Tensor {
    if (!this.sourceRows) {
      const half = this.o.targets + 1;
      const rows = Array.from({ length: this.batch }, (_, r) => (r < half ? 0 : half));
      this.sourceRows = g.constant(rows, "int64", [this.batch]);
    }
    return this.sourceRows;
  }

  /** Σ over heads and the words' tokens of the conditional rows' post-swap maps, added per layer size. */
  private addToBlend(layer: AttentionLayer, probs: Tensor, heads: number): void {
    const words = this.inputs?.words as Tensor;
    const half = this.o.targets + 1;
    const cond = cast(slice(probs, [half], [this.batch], [0]), "float32");
    const perToken = reduceSum(cond, 1); // [K+1, Nq, 77]
    const map = matmul(perToken, transpose(words, [0, 2, 1])); // [K+1, Nq, S]
    const i = this.blendGroups.findIndex(
      (g) => g.size.height === layer.height && g.size.width === layer.width,
    );
    const group = this.blendGroups[i] as { heads: number };
    const sum = this.blendSums[i];
    this.blendSums[i] = sum ? add(sum, map) : map;
    group.heads += heads;
  }
}
