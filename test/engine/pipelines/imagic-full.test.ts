/**
 * Imagic with full fine-tuning (`finetune.method: "full"`) on the tiny SD 1.x fixture on the CPU: the
 * stage lowers its loss on fixed draws, the state holds fp16 deltas of the changed UNet tensors and
 * renders the same from a reloaded copy, and the memory guard refuses before anything starts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { f16ToF32, f32ToF16 } from "../../../src/engine/graph/dtype.js";
import { StableDiffusion, TrainingMemoryError } from "../../../src/engine/index.js";
import { type Progress, renderImagic, trainImagic } from "../../../src/engine/pipelines/imagic.js";
import {
  checkStateFits,
  deserializeState,
  serializeState,
} from "../../../src/engine/pipelines/imagic-state.js";
import { UserFacingError } from "../../../src/errors.js";
import {
  type DeepPartial,
  FULL_FINETUNE_LR,
  type ImagicOptions,
  imagicOptions,
} from "../../../src/spec/imagic.js";
import {
  fastOptions,
  fixedDraws,
  loadFixtureModel,
  MODEL,
  PROMPT,
  SIZE,
  smoothPhoto,
  trainingOn,
  untunedLoss,
} from "./imagic-fixture.js";

let sd: StableDiffusion;
const photo = smoothPhoto();
const onPhoto = trainingOn(photo);

const options = (o: DeepPartial<ImagicOptions>): ImagicOptions => fastOptions(o, { method: "full" });

beforeAll(async () => {
  sd = await loadFixtureModel();
});

afterAll(async () => {
  await sd?.release();
});

describe("Imagic full fine-tuning", () => {
  it("defaults to the community pipeline's learning rate 2e-6 and validates the method", () => {
    const o = imagicOptions("balanced", { finetune: { method: "full" } });
    expect(o.finetune.lr).toBe(FULL_FINETUNE_LR);
    expect(FULL_FINETUNE_LR).toBe(2e-6);
    expect(o.finetune.weights).toBe("all");
    expect(imagicOptions("balanced", { finetune: { method: "full", lr: 1e-5 } }).finetune.lr).toBe(1e-5);
    expect(imagicOptions("balanced").finetune.lr).toBe(1e-4);
    expect(() => imagicOptions("balanced", { finetune: { method: "dreambooth" as "full" } })).toThrow(
      /fine-tune method must be lora or full \(got dreambooth\)/,
    );
  });

  it("lowers the loss on fixed draws, starting from the frozen UNet's loss at e_opt", async () => {
    const state = await trainImagic(sd, {
      ...onPhoto,
      draws: fixedDraws,
      options: options({ embedding: { steps: 2 }, finetune: { steps: 4, lr: 1e-3 } }),
    });
    const f = state.losses.finetune;
    expect(f).toHaveLength(4);
    for (let i = 1; i < f.length; i++) expect(f[i]).toBeLessThan(f[i - 1] as number);
    expect(f.at(-1) as number).toBeLessThan(0.95 * (f[0] as number));
    expect(f[0] as number).toBeCloseTo(await untunedLoss(sd, photo, state.eOpt), 5);
    // The state: no LoRA, a delta per changed tensor, every value exact in fp16.
    expect(state.lora).toBeNull();
    const delta = state.unetDelta as Map<string, Float32Array>;
    expect(delta.size).toBeGreaterThan(100);
    for (const d of delta.values()) expect(f16ToF32(f32ToF16(d))).toEqual(d);
  });

  it("renders the same images from a serialized-and-reloaded state; the delta changes the images", async () => {
    const state = await trainImagic(sd, {
      ...onPhoto,
      options: options({ embedding: { steps: 2 }, finetune: { steps: 3, lr: 1e-3, weights: "attention" } }),
    });
    const delta = state.unetDelta as Map<string, Float32Array>;
    expect([...delta.keys()].every((n) => n.includes(".attentions."))).toBe(true);
    const bytes = serializeState(state);
    const values = [...delta.values()].reduce((n, d) => n + d.length, 0);
    // fp16 deltas (2 bytes each), the embeddings and losses as fp32, a header of < 200 bytes per tensor + settings.
    const payload = 2 * values + 4 * (2 * 77 * 16 + 5);
    expect(bytes.length).toBeGreaterThan(payload);
    expect(bytes.length - payload).toBeLessThan(2048 + 200 * (4 + delta.size));
    const reloaded = deserializeState(bytes);
    expect(reloaded.unetDelta).toEqual(delta);
    const args = { etas: [0.8], seeds: [3], guidance: 7.5, steps: 3 };
    const a = await renderImagic(sd, state, args);
    const b = await renderImagic(sd, reloaded, args);
    expect(b.map((i) => i.image)).toEqual(a.map((i) => i.image));
    const { unetDelta: _, ...untuned } = state;
    const c = await renderImagic(sd, untuned, args);
    const tuned = (a[0] as { image: Float32Array }).image;
    const plain = (c[0] as { image: Float32Array }).image;
    const diff = tuned.reduce((m, v, k) => Math.max(m, Math.abs(v - (plain[k] as number))), 0);
    expect(diff).toBeGreaterThan(1e-4);
  });

  it("refuses a state too big for the queue's blobs, saying why and what to do", async () => {
    const state = deserializeState(
      serializeState({
        modelId: sd.modelId,
        prompt: PROMPT,
        width: SIZE,
        height: SIZE,
        content: { left: 0, top: 0, width: SIZE, height: SIZE },
        options: options({}),
        contextShape: [77, 16],
        eTgt: new Float32Array(77 * 16),
        eOpt: new Float32Array(77 * 16),
        lora: null,
        unetDelta: new Map([["conv_out.bias", Float32Array.of(0.5, -0.25, 1, 2)]]),
        losses: { embedding: [], finetune: [] },
      }),
    );
    expect(() => checkStateFits(state, 3 * 1024 ** 3, 20 * 1024 ** 2)).toThrow(UserFacingError);
    expect(() => checkStateFits(state, 3 * 1024 ** 3, 20 * 1024 ** 2)).toThrow(
      "the fine-tuned Imagic state is 3072.0 MiB, holding a full fine-tune (fp16 changes of 1 UNet tensors); " +
        "the queue keeps states in Redis, limited to 20.0 MiB per blob (BLOB_MAX_BYTES)",
    );
    expect(() => checkStateFits(state, 1000, 20 * 1024 ** 2)).not.toThrow();
  });

  it("refuses a full fine-tune over the memory budget before anything starts", async () => {
    const small = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32", maxTrainBytes: 100_000 });
    try {
      const events: Progress[] = [];
      const run = trainImagic(small, {
        ...onPhoto,
        onProgress: (p) => events.push(p),
        options: options({ embedding: { steps: 2 }, finetune: { steps: 2 } }),
      });
      await expect(run).rejects.toThrow(TrainingMemoryError);
      await expect(run).rejects.toThrow(/needs about .* more than the training memory limit of 97\.7 KiB/);
      expect(events).toHaveLength(0);
    } finally {
      await small.release();
    }
  });
});
