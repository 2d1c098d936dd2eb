/**
 * The engine's public API: a Stable Diffusion checkpoint whose components run as onnxruntime sessions
 * built from our own graphs (docs/ENGINE.md). Sessions are compiled lazily, one per component, batch,
 * size and variant (LoRA rank, gradients wanted, dtype), and cached for the life of the object.
 *
 * Conventions: images are [B, 3, H, W] float32 in [-1, 1]; latents are [B, 4, H/8, W/8] and always
 * *scaled* (multiplied by the VAE's scaling_factor, as the UNet sees them); contexts are [B, 77, D].
 * Every call that takes latents takes their `LatentSize` too (height and width in latent pixels): a
 * flat array's length does not say its shape, and latents need not be square.
 */
import { totalmem } from "node:os";
import { childLogger } from "../log.js";
import { modelIdentity } from "../spec/model.js";
import type { ModelShape } from "../spec/shape.js";
import { repeatBatch } from "./batch.js";
import { DDIMScheduler } from "./diffusion/ddim.js";
import type { Graph, Tensor } from "./graph/index.js";
import { type Checkpoint, checkpointFingerprint, openWeightFile } from "./models/checkpoint.js";
import {
  type ComputeDType,
  checkNetworkWeights,
  IO,
  lossGraph,
  textEncoderGraph,
  unetGraph,
  vaeDecodeGraph,
  vaeEncodeGraph,
} from "./models/components.js";
import { parseConfig, SchedulerConfigSchema, sampleSizeHW } from "./models/config.js";
import {
  checkTrainingMemory,
  estimateTrainingMemory,
  subsetFilter,
  subsetKey,
  type TrainingMemory,
  type UnetSubset,
  type UnetWeights,
} from "./models/finetune.js";
import type { ProxySettings } from "./models/hub-http.js";
import {
  type LoraFileOptions,
  type LoraInputs,
  type LoraWeights,
  loraDownName,
  loraFromSafetensors,
  loraTargets,
  loraUpName,
  newLoraWeights,
} from "./models/lora.js";
import type { TensorFile } from "./models/tensor-file.js";
import { openModel } from "./open-model.js";
import type { FlatLayout } from "./optim/flat-params.js";
import { type StepFeeds, Trainer, type TrainerArgs } from "./optim/trainer.js";
import {
  type CarryMode,
  createSession,
  type Device,
  DeviceMemoryError,
  type HostTensor,
  resolveDevice,
  type Session,
} from "./runtime/index.js";

export type { UnetSubset, UnetWeights } from "./models/finetune.js";
export { TrainingMemoryError } from "./models/finetune.js";
export type { LoraFileOptions, LoraWeights } from "./models/lora.js";
export { LoraFileError } from "./models/lora.js";
export type { Device } from "./runtime/index.js";

const log = childLogger("engine");

/** Latent height and width (the image's / the VAE factor): the shape of every latent the API takes. */
export interface LatentSize {
  height: number;
  width: number;
}

/** What predictNoise runs instead of the checkpoint's plain UNet. */
export interface UnetAdapters {
  lora?: LoraWeights;
  /** Fully fine-tuned UNet weights replacing the checkpoint's (by name). */
  unet?: UnetWeights;
}

export interface LoadOptions {
  device: Device;
  /** Compute dtype of the UNet's forward pass: fp16 halves memory and time on a GPU. auto: fp16 on a GPU. */
  dtype?: "fp32" | "fp16" | "auto";
  /** The Hugging Face cache hub downloads go to (a model id instead of a folder). */
  cacheDir?: string;
  endpoint?: string;
  token?: string;
  /** Branch, tag or commit of a hub model (default main). */
  revision?: string;
  /**
   * Weight variant: "auto" (default) takes fp16 weights where the UNet computes in fp16 (half the
   * download) and whatever the cache already holds; "none" the plain ones; a name ("fp16", "bf16") that
   * variant, refusing a repository without it as diffusers does.
   */
  variant?: string;
  /** HF_HUB_OFFLINE: use the cache only. */
  offline?: boolean;
  proxy?: ProxySettings;
  /** Stops a download in progress (shutdown during start-up). */
  signal?: AbortSignal;
  onProgress?: (p: { file: string; received: number; total: number }) => void;
  /**
   * Compute dtype of the loss-and-gradient graphs (the loss and gradients stay fp32). auto: fp16 on the
   * CUDA provider only (see `trainComputeDtype`). Default fp32: a caller of the engine gets full-precision
   * training unless it asks; the app passes ENGINE_TRAIN_DTYPE (default auto) through `modelLoadOptions`.
   */
  trainDtype?: "fp32" | "fp16" | "auto";
  /** Where compiled graphs (ONNX + external weights) are cached across restarts (default: the OS temp folder). */
  graphCacheDir?: string;
  /**
   * Memory budget of a full-weight fine-tune (`lossAndGrads` with UNet weights), in bytes; a run whose
   * estimate exceeds it is refused before anything is built. Default: ENGINE_MAX_TRAIN_BYTES's value
   * when the caller passes it, else 24 GiB on a GPU and 75 % of the machine's memory on the CPU.
   */
  maxTrainBytes?: number;
  /**
   * The CUDA provider's options (its own names) over the engine's defaults (CUDA_OPTION_DEFAULTS in
   * runtime/cuda-options.ts); other providers ignore them. The app passes ENGINE_CUDA_OPTIONS.
   */
  cudaOptions?: Record<string, string>;
  /**
   * Imagic's training sessions (default "shared"): one graph with both stages' gradients, or one graph per
   * stage with its own gradients only (faster, a second session's memory). The app passes
   * ENGINE_TRAINING_SESSIONS.
   */
  trainingSessions?: TrainingSessions;
  /**
   * A single-file model's configs and tokenizer: a diffusers folder (MODEL_CONFIG, diffusers'
   * `from_single_file(…, config=)`); unset, they are inferred from the file's tensors.
   */
  modelConfig?: string;
  /** Overrides the scheduler config's prediction type (MODEL_PREDICTION_TYPE); unset: the config's. */
  predictionType?: "epsilon" | "v_prediction";
}

export type TrainingSessions = "shared" | "per-stage";

/** 24 GiB: the consumer cards issue 5 aims at; a larger GPU raises it with ENGINE_MAX_TRAIN_BYTES. */
const DEFAULT_GPU_TRAIN_BYTES = 24 * 1024 ** 3;

export interface LossArgs {
  /** Clean latents [B, 4, h, w] (scaled). */
  latents0: Float32Array;
  /** h and w of the latents (and of the noise). */
  size: LatentSize;
  noise: Float32Array;
  /** One timestep per batch item. */
  t: number[];
  /** [B, 77, D], or [1, 77, D] shared by every item (its gradient is then summed over the batch). */
  context: Float32Array;
  lora?: LoraWeights;
  /**
   * Full fine-tuning: the current values of the UNet weights being trained (any subset, by checkpoint
   * name; `unetWeights(subset)` gives the initial ones). They are fed as graph inputs, replacing the
   * checkpoint's, and their gradients are computed.
   */
  unet?: UnetWeights;
  wrt: ReadonlyArray<"context" | "lora" | "unet">;
}

export interface LossResult {
  loss: number;
  dContext?: Float32Array;
  dLora?: LoraWeights;
  /** d loss / d weight for every tensor of `unet`, by the same names. */
  dUnet?: UnetWeights;
}

/** What a pipeline's own graph builder gets (see `compile`): the checkpoint and the engine's compute dtypes. */
export interface GraphParts {
  readonly checkpoint: Checkpoint;
  /** The UNet forward's compute dtype (LoadOptions.dtype resolved). */
  readonly unetDtype: ComputeDType;
  /** The loss-and-gradient graphs' compute dtype (LoadOptions.trainDtype). */
  readonly trainDtype: ComputeDType;
}

export class StableDiffusion {
  /** What callers hold, per key: the build's extras and a handle that outlives its session (see `cached`). */
  private readonly handles = new Map<string, Promise<{ session: Session }>>();
  /** The sessions being built or holding device memory, per key. */
  private readonly live = new Map<string, Promise<LiveSession>>();
  /** Those of them that are built: what can be released when another session needs the room. */
  private readonly ready = new Map<string, LiveSession>();
  /** The last session build started (see `open`). */
  private building: Promise<unknown> = Promise.resolve();
  private readonly unetDtype: ComputeDType;
  /** The loss-and-gradient graphs' compute dtype (LoadOptions.trainDtype resolved for the device). */
  readonly trainDtype: ComputeDType;
  /** Stands for the weights in graph cache keys: the runtime's cache hashes structure, not weight bytes. */
  private readonly fingerprint: string;
  /** The memory budget of a full-weight fine-tune (LoadOptions.maxTrainBytes). */
  readonly maxTrainBytes: number;

  private constructor(
    readonly modelId: string,
    private readonly ckpt: Checkpoint,
    readonly device: "cuda" | "webgpu" | "cpu",
    dtype: "fp32" | "fp16" | "auto",
    private readonly graphCacheDir: string | undefined,
    trainDtype: "fp32" | "fp16" | "auto" = "fp32",
    maxTrainBytes?: number,
    /** Lets go of the hub snapshot (its cleanup waits while we hold it). */
    private readonly releaseModel: () => Promise<void> = async () => {},
    /** LoadOptions.cudaOptions. */
    private readonly cudaOptions: Record<string, string> = {},
    /** LoadOptions.trainingSessions. */
    readonly trainingSessions: TrainingSessions = "shared",
  ) {
    this.maxTrainBytes =
      maxTrainBytes ?? (device === "cpu" ? Math.floor(0.75 * totalmem()) : DEFAULT_GPU_TRAIN_BYTES);
    this.trainDtype = trainComputeDtype(trainDtype, device);
    this.fingerprint = checkpointFingerprint(ckpt);
    this.unetDtype = unetComputeDtype(dtype, device);
  }

  /**
   * Opens a diffusers folder or a single-file checkpoint, or downloads a hub model id or a hub single
   * file (and a hub MODEL_CONFIG) into `cacheDir` first.
   */
  static async load(pathOrId: string, opts: LoadOptions): Promise<StableDiffusion> {
    const device = await resolveDevice(opts.device);
    const dtype = opts.dtype ?? "auto";
    const setting = opts.variant ?? "auto";
    const variant =
      setting === "none"
        ? undefined
        : setting === "auto"
          ? unetComputeDtype(dtype, device) === "float16"
            ? "fp16"
            : undefined
          : setting;
    const model = await openModel(pathOrId, opts, variant, setting);
    let ckpt: Checkpoint;
    try {
      ckpt = withPredictionType(model.checkpoint, opts.predictionType);
      checkNetworkWeights(ckpt);
    } catch (err) {
      await model.release();
      throw err;
    }
    const sd = new StableDiffusion(
      modelIdentity(pathOrId, opts),
      ckpt,
      device,
      dtype,
      opts.graphCacheDir,
      opts.trainDtype,
      opts.maxTrainBytes,
      model.release,
      opts.cudaOptions,
      opts.trainingSessions,
    );
    log.info(
      { model: pathOrId, device, dtype, trainDtype: sd.trainDtype, weights: ckpt.unet.weightsFile },
      "model opened",
    );
    return sd;
  }

  /** The VAE's down-sampling factor (8 for SD). */
  get vaeScale(): number {
    return 2 ** (this.ckpt.vae.config.block_out_channels.length - 1);
  }

  /**
   * What the checkpoint asks of an image's size (src/spec/shape.ts picks working sizes from it):
   * - `native`: the size it was trained at, in pixels: the UNet's sample_size (one side or
   *   [height, width]) × the VAE factor; 512² when the config does not say;
   * - `multiple`: the pixel multiple at which every down-sampling of the VAE and the UNet halves a whole
   *   number: the VAE factor × 2^(UNet levels − 1), 64 for SD 1.x/2.x. Other sizes run (the UNet
   *   up-samples to its skips' sizes, as diffusers does) but shift features by fractions of a pixel.
   */
  get imageShape(): ModelShape {
    const s = this.ckpt.unet.config.sample_size;
    const [h, w] = s === null ? [512 / this.vaeScale, 512 / this.vaeScale] : sampleSizeHW(s);
    return {
      native: { height: h * this.vaeScale, width: w * this.vaeScale },
      multiple: this.vaeScale * 2 ** (this.ckpt.unet.config.block_out_channels.length - 1),
    };
  }

  /** The latent size of an image of height × width pixels (each a multiple of the VAE factor). */
  latentSize(height: number, width: number): LatentSize {
    for (const [what, px] of [
      ["height", height],
      ["width", width],
    ] as const) {
      if (!Number.isInteger(px) || px < this.vaeScale || px % this.vaeScale !== 0) {
        throw new Error(
          `image ${what} ${px} is not a positive multiple of the VAE's factor ${this.vaeScale}`,
        );
      }
    }
    return { height: height / this.vaeScale, width: width / this.vaeScale };
  }

  get contextShape(): [77, number] {
    return [77, this.ckpt.unet.config.cross_attention_dim];
  }

  get latentChannels(): number {
    return this.ckpt.unet.config.in_channels;
  }

  get predictionType(): "epsilon" | "v_prediction" {
    return this.ckpt.scheduler.config.prediction_type;
  }

  tokenize(text: string): { ids: number[]; truncated: boolean } {
    return this.ckpt.tokenizer.encode(text);
  }

  /** The text encoder's last_hidden_state for each text: [n, 77, D]. */
  async encodeText(texts: string[]): Promise<Float32Array> {
    if (texts.length === 0) throw new Error("encodeText: no texts given");
    const n = texts.length;
    const ids = new BigInt64Array(n * 77);
    texts.forEach((t, i) => {
      this.tokenize(t).ids.forEach((id, j) => {
        ids[i * 77 + j] = BigInt(id);
      });
    });
    const { session } = await this.cached(`text:${n}`, () => ({
      graph: textEncoderGraph(this.ckpt.textEncoder.weights, this.ckpt.textEncoder.config, n),
    }));
    const out = await session.run({ [IO.inputIds]: { dtype: "int64", shape: [n, 77], data: ids } });
    return f32(out, IO.lastHiddenState);
  }

  /**
   * image [1, 3, h, w] (h, w in pixels) → the latent distribution's mean and std, both × scaling_factor,
   * and their latent size.
   */
  async encodeImage(
    image: Float32Array,
    h: number,
    w: number,
  ): Promise<{ mean: Float32Array; std: Float32Array; size: LatentSize }> {
    expectLength("encodeImage: image", image, 3 * h * w);
    const size = this.latentSize(h, w);
    const { session } = await this.cached(`vae_encode:${h}x${w}`, () => ({
      graph: vaeEncodeGraph(this.ckpt.vae.weights, this.ckpt.vae.config, h, w),
    }));
    const out = await session.run({ [IO.image]: { dtype: "float32", shape: [1, 3, h, w], data: image } });
    const sf = this.ckpt.vae.config.scaling_factor;
    return { mean: scale(f32(out, IO.mean), sf), std: scale(f32(out, IO.std), sf), size };
  }

  /** Scaled latents [B, 4, h, w] → images [B, 3, h·8, w·8] in [-1, 1] (not clamped). */
  async decodeLatents(latents: Float32Array, size: LatentSize): Promise<Float32Array> {
    const [lh, lw] = checkSize("decodeLatents", size);
    const per = this.latentChannels * lh * lw;
    const batch = batchOf("decodeLatents: latents", latents, per);
    // One image per run (nothing in the VAE mixes a batch): at full resolution the decoder's activations
    // and cuDNN's workspace are a job's largest, one buffer alone 2 GiB at batch 4 and 512². At batch 4,
    // on a 16 GB card, the decoder and the sampling UNet evicted each other at every render
    // (docs/PERFORMANCE.md); and one session now serves every batch, a preview's as a grid's.
    const { session } = await this.cached(`vae_decode:1:${lh}x${lw}`, () => ({
      graph: vaeDecodeGraph(this.ckpt.vae.weights, this.ckpt.vae.config, 1, lh, lw),
    }));
    const unscaled = scale(latents, 1 / this.ckpt.vae.config.scaling_factor);
    let image: Float32Array | undefined;
    for (let i = 0; i < batch; i++) {
      const out = await session.run({
        [IO.latents]: {
          dtype: "float32",
          shape: [1, this.latentChannels, lh, lw],
          data: unscaled.subarray(i * per, (i + 1) * per),
        },
      });
      const one = f32(out, IO.image);
      if (batch === 1) return one;
      image ??= new Float32Array(batch * one.length);
      image.set(one, i * one.length);
    }
    return image as Float32Array;
  }

  /**
   * The UNet's output (ε or v, as the checkpoint predicts) for latents [B, 4, h, w] of the given size at
   * timestep t (one for the batch, or one per item) with context [B, 77, D]. The batch comes from the
   * context.
   */
  async predictNoise(
    latents: Float32Array,
    size: LatentSize,
    t: number | readonly number[],
    context: Float32Array,
    { lora, unet }: UnetAdapters = {},
  ): Promise<Float32Array> {
    const batch = batchOf("predictNoise: context", context, this.contextSize());
    const [lh, lw] = this.latentDims("predictNoise: latents", latents, batch, size);
    const rank = lora ? loraRank(lora) : 0;
    const {
      session,
      lora: inputs,
      weights,
    } = await this.cached(
      `unet:${batch}:${lh}x${lw}:${this.unetDtype}:r${rank}${unet ? `:w${subsetKey(unet.keys())}` : ""}`,
      () =>
        unetGraph(this.ckpt.unet.weights, this.ckpt.unet.config, {
          batch,
          height: lh,
          width: lw,
          dtype: this.unetDtype,
          loraRank: rank || undefined,
          weightInputs: unet ? (name) => unet.has(name) : undefined,
        }),
    );
    const feeds: Record<string, HostTensor> = {
      [IO.sample]: { dtype: "float32", shape: [batch, this.latentChannels, lh, lw], data: latents },
      [IO.timestep]: { dtype: "float32", shape: [batch], data: timesteps(t, batch) },
      [IO.context]: { dtype: "float32", shape: [batch, 77, this.contextShape[1]], data: context },
      ...(lora && inputs ? inputs.feeds(lora) : {}),
      ...(unet ? weightFeeds("predictNoise", weights, unet) : {}),
    };
    return f32(await session.run(feeds), IO.unetOut);
  }

  /**
   * One compiled training step: the denoising loss at the given timesteps (noise added as the scheduler
   * does, target ε or v per the checkpoint) and its gradients w.r.t. the context and/or the LoRA weights.
   */
  async lossAndGrads(args: LossArgs): Promise<LossResult> {
    const step = this.lossFeeds(args, args.wrt.includes("context"), "lossAndGrads");
    const {
      session,
      lora: inputs,
      weights,
    } = await this.lossSession(
      { batch: args.t.length, size: args.size, lora: args.lora, unet: args.unet },
      args.wrt,
      false,
    );
    const out = await session.run({
      ...step.feeds,
      ...(args.lora && inputs ? inputs.feeds(args.lora) : {}),
      ...(args.unet ? weightFeeds("lossAndGrads", weights, args.unet) : {}),
    });
    const result: LossResult = step.result(out);
    if (args.wrt.includes("lora") && args.lora) {
      const dLora: LoraWeights = new Map();
      for (const [path, m] of args.lora) {
        dLora.set(path, {
          ...m,
          down: f32(out, IO.grad + loraDownName(path)),
          up: f32(out, IO.grad + loraUpName(path)),
        });
      }
      result.dLora = dLora;
    }
    if (args.unet) {
      const unet = args.unet;
      result.dUnet = new Map([...unet.keys()].map((name) => [name, f32(out, IO.grad + name)]));
    }
    return result;
  }

  /**
   * A training run of a LoRA adapter or of UNet weights with Adam inside the compiled graph: the trained
   * tensors and Adam's state stay with the session (on the GPU where the runtime can) from one `step` to
   * the next, instead of crossing to the host and back each step; `finish` writes the trained values into
   * `lora` / `unet`. One run per session at a time: its state is the session's.
   */
  async trainer(args: TrainerArgs): Promise<Trainer> {
    if (!args.lora === !args.unet)
      throw new Error("trainer: train a LoRA adapter or UNet weights, one of them");
    const wantContext = args.wrtContext ?? false;
    const wrt: LossArgs["wrt"] = [
      ...(wantContext ? (["context"] as const) : []),
      args.lora ? "lora" : "unet",
    ];
    const { session, lora: inputs, trained } = await this.lossSession(args, wrt, true);
    if (!trained) throw new Error("trainer: the training graph has no flat parameters");
    const arrays = new Map<string, Float32Array>(
      args.lora
        ? [...args.lora].flatMap(([path, m]) => [
            [loraDownName(path), m.down],
            [loraUpName(path), m.up],
          ])
        : [...(args.unet ?? [])],
    );
    const values = (name: string) => {
      const a = arrays.get(name);
      if (!a) throw new Error(`trainer: the trained tensors lack ${name}`);
      return a;
    };
    // The adapter's feeds check it against the graph's modules; of them the graph takes its scale alone
    // (its tensors are the flat parameters' pieces here).
    const extra = Object.fromEntries(
      Object.entries(args.lora && inputs ? inputs.feeds(args.lora) : {}).filter(([name]) =>
        session.inputNames.includes(name),
      ),
    );
    return new Trainer(session, { layout: trained, values }, extra, args.adam, (step) =>
      this.lossFeeds({ ...step, size: args.size }, wantContext, "trainer"),
    );
  }

  /**
   * The session of the loss graph for a batch, latent size and trained tensors: gradients w.r.t. `wrt`,
   * or (`optimize`) Adam inside for the LoRA/weight inputs (lossAndGrads and a trainer share the rest).
   */
  private lossSession(
    a: { batch: number; size: LatentSize; lora?: LoraWeights; unet?: UnetWeights },
    wrt: LossArgs["wrt"],
    optimize: boolean,
  ): Promise<{
    session: Session;
    lora: LoraInputs | undefined;
    weights: Map<string, Tensor>;
    trained?: FlatLayout;
  }> {
    const what = optimize ? "trainer" : "lossAndGrads";
    if (a.batch === 0) throw new Error(`${what}: no timesteps given`);
    const [lh, lw] = checkSize(`${what}: latents`, a.size);
    const wantContext = wrt.includes("context");
    const wantLora = wrt.includes("lora");
    if (wantLora && !a.lora) throw new Error(`${what}: gradients w.r.t. LoRA need LoRA weights`);
    const unet = a.unet;
    if (wrt.includes("unet") !== (unet !== undefined)) {
      throw new Error(
        `${what}: UNet weights (\`unet\`) and wrt "unet" go together (trained weights are graph inputs whose gradients the graph computes)`,
      );
    }
    const rank = a.lora ? loraRank(a.lora) : 0;
    const trained = unet ? `:w${subsetKey(unet.keys())}` : "";
    const key = `${optimize ? "train" : "loss"}:${a.batch}:${lh}x${lw}:${this.trainDtype}:r${rank}:${wantContext ? "c" : ""}${wantLora ? "l" : ""}${trained}`;
    return this.cached(key, () => {
      if (unet) this.checkTrainingMemory({ names: [...unet.keys()], batch: a.batch, height: lh, width: lw });
      return lossGraph(this.ckpt.unet.weights, this.ckpt.unet.config, {
        batch: a.batch,
        height: lh,
        width: lw,
        loraRank: rank || undefined,
        prediction: this.predictionType,
        dtype: this.trainDtype,
        wrtContext: wantContext,
        wrtLora: wantLora,
        wrtWeights: unet ? (name) => unet.has(name) : undefined,
        optimize,
      });
    });
  }

  /** One loss step's feeds (the photo's latents, noise, timesteps and their noise scales, the context), checked. */
  private lossFeeds(
    args: Pick<LossArgs, "latents0" | "size" | "noise" | "t" | "context">,
    wantContext: boolean,
    what: string,
  ): StepFeeds {
    const batch = args.t.length;
    const [lh, lw] = this.latentDims(`${what}: latents0`, args.latents0, batch, args.size);
    expectLength(`${what}: noise`, args.noise, args.latents0.length);
    const ctxBatch = batchOf(`${what}: context`, args.context, this.contextSize());
    if (ctxBatch !== batch && ctxBatch !== 1) {
      throw new Error(
        `${what}: context holds ${ctxBatch} items for a batch of ${batch} (give ${batch} or 1)`,
      );
    }
    const { sqrtAlpha, sqrtOneMinusAlpha } = this.scheduler().noiseScales(args.t);
    const shape = [batch, this.latentChannels, lh, lw];
    const context = ctxBatch === batch ? args.context : repeatBatch(args.context, batch);
    return {
      feeds: {
        [IO.x0]: { dtype: "float32", shape, data: args.latents0 },
        [IO.noise]: { dtype: "float32", shape, data: args.noise },
        [IO.timestep]: { dtype: "float32", shape: [batch], data: Float32Array.from(args.t) },
        [IO.sqrtAlpha]: { dtype: "float32", shape: [batch], data: sqrtAlpha },
        [IO.sqrtOneMinusAlpha]: { dtype: "float32", shape: [batch], data: sqrtOneMinusAlpha },
        [IO.context]: { dtype: "float32", shape: [batch, 77, this.contextShape[1]], data: context },
      },
      result: (out) => {
        const loss = f32(out, IO.loss)[0] as number;
        if (!wantContext) return { loss };
        const d = f32(out, IO.dContext);
        return { loss, dContext: ctxBatch === batch ? d : sumBatches(d, batch) };
      },
    };
  }

  /**
   * Float32 copies of the checkpoint's UNet weights in `subset` (every weight, the attention blocks',
   * or a predicate over names): the starting point of a full fine-tune, for `lossAndGrads({ unet })`
   * and `predictNoise(…, unet)`.
   */
  unetWeights(subset: UnetSubset = "all"): UnetWeights {
    const store = this.ckpt.unet.weights;
    return new Map(this.unetWeightNames(subset).map((n) => [n, store.float32(n)]));
  }

  /** The checkpoint names of the UNet weights in `subset` (nothing read). */
  unetWeightNames(subset: UnetSubset = "all"): string[] {
    const names = this.ckpt.unet.weights.names().filter(subsetFilter(subset));
    if (names.length === 0) throw new Error("unetWeights: the subset holds no UNet weight");
    return names;
  }

  /**
   * The memory a full fine-tune of the named UNet weights needs per step (fp32 weights, gradients and
   * Adam m/v; frozen weights in the training dtype; activations, roughly) against `maxTrainBytes`.
   */
  trainingMemory(args: {
    names: readonly string[];
    batch: number;
    height: number;
    width: number;
  }): TrainingMemory & {
    limit: number;
  } {
    const store = this.ckpt.unet.weights;
    const trainedSet = new Set(args.names);
    let trainedParams = 0;
    let frozenParams = 0;
    for (const n of store.names()) {
      const count = store.info(n).shape.reduce((a, b) => a * b, 1);
      if (trainedSet.has(n)) trainedParams += count;
      else frozenParams += count;
    }
    const m = estimateTrainingMemory({
      config: this.ckpt.unet.config,
      trainedParams,
      frozenParams,
      computeBytes: this.trainDtype === "float16" ? 2 : 4,
      batch: args.batch,
      height: args.height,
      width: args.width,
    });
    return { ...m, limit: this.maxTrainBytes };
  }

  /** Throws TrainingMemoryError (estimate and limit named) when `trainingMemory` exceeds the budget. */
  checkTrainingMemory(args: {
    names: readonly string[];
    batch: number;
    height: number;
    width: number;
  }): void {
    const m = this.trainingMemory(args);
    checkTrainingMemory(
      m,
      m.limit,
      `fine-tuning ${args.names.length} UNet weight tensors at batch ${args.batch}, ${args.height}×${args.width} latents`,
    );
  }

  /** A fresh LoRA on every attention projection: A random (seeded), B zero, so it starts as a no-op. */
  newLora(rank: number, alpha: number, seed: number): LoraWeights {
    const store = this.ckpt.unet.weights;
    return newLoraWeights(
      loraTargets(store.names(), (n) => store.info(n).shape),
      rank,
      alpha,
      seed,
    );
  }

  /** The checkpoint's tokenizer (token ids, a token's text). */
  get tokenizer(): Checkpoint["tokenizer"] {
    return this.ckpt.tokenizer;
  }

  /**
   * A LoRA file (peft / diffusers `…to_q.lora_A.weight`, diffusers' older `…to_q.lora.down.weight` and
   * `…processor.to_q_lora.down.weight` or kohya's `lora_unet_…lora_down.weight` names) as LoRA weights
   * for this UNet; alpha from `alpha`, else the file's, else the rank (scale 1). Throws LoraFileError naming what does not fit. A `.bin`
   * (diffusers' older `pytorch_lora_weights.bin`) is read as a torch.save file, its pickle never executed.
   */
  loadLora(file: string | TensorFile, options: LoraFileOptions = {}): LoraWeights {
    const store = this.ckpt.unet.weights;
    const st = typeof file === "string" ? openWeightFile(file) : file;
    return loraFromSafetensors(
      st,
      loraTargets(store.names(), (n) => store.info(n).shape),
      options,
    );
  }

  /**
   * A pipeline's own graph over this checkpoint (Photoswap's attention-controlled UNet, the null-text
   * loss, the text encoder with a learned token, …), built and compiled once per `key` and cached like
   * the facade's own sessions: for the life of the object, and on disk under the weights' fingerprint.
   * `key` names everything the graph depends on besides the model (batch, size, variant); `build` returns
   * the graph and whatever the pipeline needs to feed it, which the promise gives back with the session.
   */
  compile<T extends { graph: Graph }>(
    key: string,
    build: (parts: GraphParts) => T,
  ): Promise<Omit<T, "graph"> & { session: Session }> {
    return this.cached(`pipeline:${key}`, () =>
      build({ checkpoint: this.ckpt, unetDtype: this.unetDtype, trainDtype: this.trainDtype }),
    );
  }

  /** A new DDIM scheduler with the checkpoint's noise schedule (each caller sets its own timesteps). */
  scheduler(): DDIMScheduler {
    return DDIMScheduler.fromConfig(this.ckpt.scheduler.config);
  }

  /** Releases every session (their device memory); the handles callers hold rebuild on their next run. */
  async release(): Promise<void> {
    await this.releaseWhere(() => true);
  }

  /** Releases the sessions and the hold on the model's hub snapshot: the object is done with. */
  async close(): Promise<void> {
    await this.release();
    await this.releaseModel();
  }

  private contextSize(): number {
    return 77 * this.contextShape[1];
  }

  private latentDims(what: string, latents: Float32Array, batch: number, size: LatentSize): [number, number] {
    const [h, w] = checkSize(what, size);
    expectLength(
      `${what} (${batch}×${this.latentChannels}×${h}×${w})`,
      latents,
      batch * this.latentChannels * h * w,
    );
    return [h, w];
  }

  /**
   * The session for `key`, built once and then shared by every call. Callers get a handle, not the
   * session: when the device runs out of memory (building a session or running one) the model releases
   * its other sessions and tries once more — Imagic's training session, done with, makes room for the
   * sampling one on a 16 GB card — and a handle whose session was released that way rebuilds it on its
   * next run (from the on-disk graph cache). Out of memory again: every session is released and the
   * call fails with DeviceMemoryError, so the next job starts with the device's memory back.
   */
  private cached<T extends { graph: Graph }>(
    key: string,
    build: () => T,
  ): Promise<Omit<T, "graph"> & { session: Session }> {
    let entry = this.handles.get(key);
    if (!entry) {
      entry = (async () => {
        const { graph, ...rest } = build();
        const { session } = await this.open(key, graph);
        return { ...rest, session: this.handle(key, build, session) };
      })();
      // A failed build is not kept, so a later call can retry (e.g. after freeing memory).
      entry.catch(() => this.handles.delete(key));
      this.handles.set(key, entry);
    }
    // Each key is only ever built by one builder, so the entry holds what that builder returned.
    return entry as Promise<Omit<T, "graph"> & { session: Session }>;
  }

  /** Builds the session for `key`; out of device memory, once more after releasing the others. */
  private open(key: string, graph: Graph): Promise<LiveSession> {
    // One build at a time: a build out of memory can then make room from every other session, built
    // ones all (a build in flight could hold memory that nothing would release).
    const entry = this.building.then(async (): Promise<LiveSession> => {
      const started = performance.now();
      const create = () =>
        createSession(graph, {
          device: this.device,
          cacheKey: `sd-${this.fingerprint}/${key}`,
          cacheDir: this.graphCacheDir,
          ...(this.device === "cuda" ? { providerOptions: this.cudaOptions } : {}),
        });
      let session: Session;
      try {
        session = await create();
      } catch (e) {
        if (!(e instanceof DeviceMemoryError) || !(await this.releaseWhere((k) => k !== key))) throw e;
        log.warn(
          { model: this.modelId, key },
          "out of device memory building a session: released the others",
        );
        session = await create();
      }
      log.debug({ key, ms: Math.round(performance.now() - started) }, "session ready");
      const live = { session, running: new Set<Promise<unknown>>() };
      this.ready.set(key, live);
      return live;
    });
    this.building = entry.catch(() => undefined);
    entry.catch((e) => {
      if (this.live.get(key) === entry) this.live.delete(key);
      if (e instanceof DeviceMemoryError) void this.release();
    });
    this.live.set(key, entry);
    return entry;
  }

  /** A handle on the session for `key` that survives its release (see `cached`). */
  private handle(key: string, build: () => { graph: Graph }, first: Session): Session {
    const runOnce = async (feeds: Record<string, HostTensor>, opts?: { carry?: CarryMode }) => {
      let live = await (this.live.get(key) ?? this.open(key, build().graph));
      // Released while we waited (another session's build made room): look again. From this check to
      // `running.add` nothing else runs, so a release either came before it or waits for this run.
      while (this.ready.get(key) !== live) live = await (this.live.get(key) ?? this.open(key, build().graph));
      const run = live.session.run(feeds, opts);
      live.running.add(run);
      try {
        return await run;
      } finally {
        live.running.delete(run);
      }
    };
    return {
      device: first.device,
      inputNames: first.inputNames,
      outputNames: first.outputNames,
      inputs: first.inputs,
      outputs: first.outputs,
      carried: first.carried,
      // A rebuilt session starts without carried state: its first "continue" says so (runtime/session.ts).
      run: async (feeds, opts) => {
        try {
          return await runOnce(feeds, opts);
        } catch (e) {
          if (!(e instanceof DeviceMemoryError)) throw e;
          if (await this.releaseWhere((k) => k !== key)) {
            log.warn(
              { model: this.modelId, key },
              "out of device memory in a run: released the others, running again",
            );
            try {
              return await runOnce(feeds, opts);
            } catch (again) {
              if (!(again instanceof DeviceMemoryError)) throw again;
            }
          }
          log.warn({ model: this.modelId }, "out of device memory: releasing every session of the model");
          await this.release();
          throw e;
        }
      },
      readCarried: async () => {
        const live = this.ready.get(key);
        if (!live) throw new Error(`the session of ${key} was released: its carried state is gone`);
        return live.session.readCarried();
      },
      endProfiling: () => undefined, // the model's sessions are built without the profiler
      release: () => this.releaseWhere((k) => k === key).then(() => undefined),
    };
  }

  /**
   * Releases the built sessions whose key `which` picks, each after its runs in flight; whether there
   * was any. The one being built (builds take turns) is not among them.
   */
  private async releaseWhere(which: (key: string) => boolean): Promise<boolean> {
    const idle = [...this.ready].filter(([key]) => which(key));
    for (const [key] of idle) {
      this.ready.delete(key);
      this.live.delete(key);
    }
    for (const [, { session, running }] of idle) {
      await Promise.allSettled([...running]);
      await session.release();
    }
    return idle.length > 0;
  }
}

/** A built session, and its runs in flight (a release waits for them). */
interface LiveSession {
  readonly session: Session;
  readonly running: Set<Promise<unknown>>;
}

/** The UNet's compute dtype: fp16 when asked for, or by default on a GPU. */
function unetComputeDtype(dtype: "fp32" | "fp16" | "auto", device: Device): ComputeDType {
  return dtype === "fp16" || (dtype === "auto" && device !== "cpu") ? "float16" : "float32";
}

/**
 * The training graphs' compute dtype for a setting on the resolved device. auto is fp16 on CUDA only:
 * there fp16 training was measured faster and smaller (ENGINE_TRAIN_DTYPE in src/config.ts says by how
 * much); the CPU has no fp16 arithmetic and WebGPU gained too little to leave fp32.
 */
export function trainComputeDtype(
  setting: "fp32" | "fp16" | "auto",
  device: "cuda" | "webgpu" | "cpu",
): ComputeDType {
  return setting === "fp16" || (setting === "auto" && device === "cuda") ? "float16" : "float32";
}

/** The checkpoint with its scheduler's prediction type replaced, where the operator says so. */
function withPredictionType(ckpt: Checkpoint, predictionType: LoadOptions["predictionType"]): Checkpoint {
  if (!predictionType || predictionType === ckpt.scheduler.config.prediction_type) return ckpt;
  log.info(
    { from: ckpt.scheduler.config.prediction_type, to: predictionType },
    "prediction type set by MODEL_PREDICTION_TYPE",
  );
  // Validated again: some settings hold only with one prediction type (zero terminal SNR needs v).
  const config = parseConfig(
    SchedulerConfigSchema,
    { ...ckpt.scheduler.config, prediction_type: predictionType },
    `the scheduler config with MODEL_PREDICTION_TYPE=${predictionType}`,
  );
  return { ...ckpt, scheduler: { ...ckpt.scheduler, config } };
}

function checkSize(what: string, size: LatentSize): [number, number] {
  const { height, width } = size;
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new Error(`${what}: latent size ${height}×${width} is not two positive whole numbers`);
  }
  return [height, width];
}

function timesteps(t: number | readonly number[], batch: number): Float32Array {
  if (typeof t === "number") return new Float32Array(batch).fill(t);
  if (t.length !== batch) throw new Error(`predictNoise: ${t.length} timesteps for a batch of ${batch}`);
  return Float32Array.from(t);
}

/** Feeds for the UNet weights a graph takes as inputs: exactly those, float32, in their shapes. */
function weightFeeds(
  what: string,
  inputs: Map<string, Tensor> | undefined,
  weights: UnetWeights,
): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  for (const [name, t] of inputs ?? []) {
    const data = weights.get(name);
    if (!data) throw new Error(`${what}: the fine-tuned UNet weights lack ${name}`);
    const shape = [...t.shape];
    expectLength(
      `${what}: UNet weight ${name} [${shape}]`,
      data,
      shape.reduce((a, b) => a * b, 1),
    );
    out[name] = { dtype: "float32", shape, data };
  }
  if ((inputs?.size ?? 0) !== weights.size) {
    const extra = [...weights.keys()].filter((k) => !inputs?.has(k));
    throw new Error(`${what}: the UNet does not use weight(s) ${extra.slice(0, 3).join(", ")}`);
  }
  return out;
}

function loraRank(lora: LoraWeights): number {
  const first = lora.values().next().value;
  if (!first) throw new Error("LoRA weights are empty");
  return first.rank;
}

function f32(out: Record<string, HostTensor>, name: string): Float32Array {
  const t = out[name];
  if (!t || !(t.data instanceof Float32Array))
    throw new Error(`session output "${name}" is missing or not float32`);
  return t.data;
}

function scale(x: Float32Array, s: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = (x[i] as number) * s;
  return out;
}

function expectLength(what: string, x: Float32Array, n: number): void {
  if (x.length !== n) throw new Error(`${what} holds ${x.length} values, expected ${n}`);
}

function batchOf(what: string, x: Float32Array, perItem: number): number {
  const b = x.length / perItem;
  if (!Number.isInteger(b) || b < 1)
    throw new Error(`${what} holds ${x.length} values, not a multiple of ${perItem}`);
  return b;
}

function sumBatches(x: Float32Array, n: number): Float32Array {
  const per = x.length / n;
  const out = new Float32Array(per);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < per; j++) out[j] = (out[j] as number) + (x[i * per + j] as number);
  return out;
}
