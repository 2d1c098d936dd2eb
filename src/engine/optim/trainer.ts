/**
 * A training run with Adam inside the compiled loss graph (models/components.ts, lossGraph's `optimize`):
 * the trained tensors (a LoRA adapter or UNet weights) and Adam's m and v are carried inputs of the session
 * (runtime/carry.ts), so from the second step on they stay where the session keeps them — on the GPU with
 * the CUDA add-on — and a step sends only the photo's noise and timesteps and reads back only the loss (and
 * the context's gradient, when asked for). Host Adam (optim/adam.ts) would send every trained tensor and
 * read back every gradient each step, then update them on one CPU core.
 */
import { PACK_ROW } from "../graph/emit.js";
import type { LatentSize } from "../index.js";
import { IO } from "../models/components.js";
import type { UnetWeights } from "../models/finetune.js";
import type { LoraWeights } from "../models/lora.js";
import type { HostTensor, Session } from "../runtime/index.js";
import { ADAM_COEFFICIENTS, ADAM_HOLD, type AdamOptions, adamCoefficients } from "./adam.js";
import { type FlatLayout, packFlat, unpackFlat } from "./flat-params.js";

export interface TrainerArgs {
  /** The adapter or the UNet weights to train (one of them); `finish` writes the trained values into them. */
  lora?: LoraWeights;
  unet?: UnetWeights;
  /** Also d loss / d context each step (Imagic's shared stage 1 optimizes the context on the host with it). */
  wrtContext?: boolean;
  batch: number;
  size: LatentSize;
  adam: AdamOptions;
}

export interface TrainerStepArgs {
  /** Clean latents [B, 4, h, w] (scaled), the noise added to them, one timestep per batch item. */
  latents0: Float32Array;
  noise: Float32Array;
  t: number[];
  /** [B, 77, D] or [1, 77, D]. */
  context: Float32Array;
  /** Leave the trained tensors and Adam's state as they are this step (the step still gives the loss and
   *  the context's gradient): Imagic's stage 1 on the graph that stage 2 trains the adapter with. */
  hold?: boolean;
}

/** One step's feeds and how to read its loss (and the context's gradient) from its outputs (the model builds them). */
export interface StepFeeds {
  feeds: Record<string, HostTensor>;
  result(out: Record<string, HostTensor>): { loss: number; dContext?: Float32Array };
}

/** A training graph's carried inputs at the start: the flat parameters `params`, Adam's m = v = 0. */
export function startingState(layout: FlatLayout, params: Float32Array): Record<string, HostTensor> {
  const shape = [layout.rows, PACK_ROW];
  const zeros = (): HostTensor => ({
    dtype: "float32",
    shape,
    data: new Float32Array(layout.rows * PACK_ROW),
  });
  return {
    [IO.trainParams]: { dtype: "float32", shape, data: params },
    [IO.adamM]: zeros(),
    [IO.adamV]: zeros(),
  };
}

/**
 * The trainer whose state each training session holds: the one that last started on it. Another trainer
 * starting on the same session (same shapes and trained set) replaces the state, and the one it replaced
 * must fail rather than go on from the newcomer's values.
 */
const holders = new WeakMap<Session, Trainer>();

export class Trainer {
  /** Adam's t: the steps that updated the trained tensors. */
  private updates = 0;
  private started = false;

  constructor(
    private readonly session: Session,
    /** Where each trained tensor sits in the graph's flat parameters, and the caller's array of it
     *  (read at the first step, written by `finish`). */
    private readonly trained: { layout: FlatLayout; values: (name: string) => Float32Array },
    /** The graph's other inputs for the trained tensors (the adapter's scale). */
    private readonly extra: Record<string, HostTensor>,
    private readonly adam: AdamOptions,
    private readonly stepFeeds: (s: TrainerStepArgs) => StepFeeds,
  ) {}

  /** Adam's steps so far. */
  get steps(): number {
    return this.updates;
  }

  async step(s: TrainerStepArgs): Promise<{ loss: number; dContext?: Float32Array }> {
    if (this.started) this.checkHolder();
    const { feeds, result } = this.stepFeeds(s);
    const coefficients = s.hold ? ADAM_HOLD : adamCoefficients(this.adam, this.updates + 1);
    const out = await this.session.run(
      {
        ...feeds,
        ...this.extra,
        // The first step starts Adam from the caller's values, m = v = 0; later ones go on from the session's.
        ...(this.started ? {} : this.initial()),
        [IO.adamCoefficients]: { dtype: "float32", shape: [ADAM_COEFFICIENTS], data: coefficients },
      },
      { carry: this.started ? "continue" : "reset" },
    );
    if (!this.started) holders.set(this.session, this);
    this.started = true;
    if (!s.hold) this.updates++;
    return result(out);
  }

  private initial(): Record<string, HostTensor> {
    const { layout, values } = this.trained;
    return startingState(layout, packFlat(layout, values));
  }

  private checkHolder(): void {
    if (holders.get(this.session) !== this)
      throw new Error(
        "trainer: another training run started on this training session, replacing this one's state",
      );
  }

  /** Writes the trained values into the arrays the trainer was given (nothing to write before a step). */
  async finish(): Promise<void> {
    if (!this.started) return;
    this.checkHolder();
    const flat = (await this.session.readCarried())[IO.trainParams];
    if (!flat) throw new Error("trainer: the session carries no trained parameters");
    unpackFlat(this.trained.layout, flat.data as Float32Array, this.trained.values);
  }
}
