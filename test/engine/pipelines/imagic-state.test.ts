import { describe, expect, it } from "vitest";
import {
  deserializeState,
  type ImagicState,
  serializeState,
} from "../../../src/engine/pipelines/imagic-state.js";
import { imagicOptions } from "../../../src/spec/imagic.js";

function filled(n: number, f: (i: number) => number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => f(i));
}

function sampleState(): ImagicState {
  const mod = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k";
  return {
    modelId: "test/sd1",
    prompt: "a photo of a sitting dog",
    width: 64,
    height: 128,
    content: { left: 0, top: 11, width: 64, height: 107 },
    source: { width: 600, height: 1003 },
    options: imagicOptions("fast", { embedding: { steps: 3 } }),
    contextShape: [77, 16],
    eTgt: filled(77 * 16, (i) => Math.sin(i)),
    eOpt: filled(77 * 16, (i) => Math.cos(i) * 1e-3),
    lora: new Map([
      [
        mod,
        {
          down: filled(4 * 16, (i) => i / 7),
          up: filled(32 * 4, (i) => -i),
          rank: 4,
          alpha: 8,
          inF: 16,
          outF: 32,
        },
      ],
    ]),
    losses: { embedding: [0.5, 0.25, 0.125], finetune: [] },
  };
}

describe("Imagic state serialization", () => {
  it("round-trips every field exactly", () => {
    const s = sampleState();
    const bytes = serializeState(s);
    const back = deserializeState(bytes);
    expect(back).toEqual(s);
    // Header + 2 embeddings + LoRA + losses, nothing else: within a few hundred bytes of the raw payload.
    const payload = (2 * 77 * 16 + 4 * 16 + 32 * 4 + 3) * 4;
    expect(bytes.length).toBeGreaterThan(payload);
    expect(bytes.length).toBeLessThan(payload + 2500);
  });

  it("is a valid safetensors file: u64 header length, 8-aligned JSON, diffusers LoRA names", () => {
    const bytes = serializeState(sampleState());
    const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(len % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len)));
    expect(Object.keys(header)).toContain(
      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
    );
    expect(
      header["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"].shape,
    ).toEqual([32, 4]);
    expect(header.e_opt).toEqual({
      dtype: "F32",
      shape: [77, 16],
      data_offsets: [77 * 16 * 4, 2 * 77 * 16 * 4],
    });
  });

  it("round-trips a state without LoRA, from an unaligned buffer", () => {
    const s = { ...sampleState(), lora: null };
    const bytes = serializeState(s);
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    expect(deserializeState(shifted)).toEqual(s);
  });

  it("reads a state written before photo boxes as all content; refuses a box outside the working size", () => {
    const { content: _, source: __, ...old } = sampleState();
    const bytes = serializeState(old as ImagicState);
    expect(deserializeState(bytes).content).toEqual({ left: 0, top: 0, width: 64, height: 128 });
    expect(deserializeState(bytes).source).toBeUndefined();
    const outside = serializeState({
      ...sampleState(),
      content: { left: 8, top: 0, width: 64, height: 128 },
    });
    expect(() => deserializeState(outside)).toThrow(
      /not a usable Imagic state: its photo box .* is outside its 64×128 working size/,
    );
  });

  it("refuses truncated, foreign and inconsistent files with a clear message", () => {
    const bytes = serializeState(sampleState());
    expect(() => deserializeState(bytes.subarray(0, 4))).toThrow(
      /not a usable Imagic state: 4 bytes is too short/,
    );
    expect(() => deserializeState(bytes.subarray(0, bytes.length - 8))).toThrow(/bad offsets/);
    const foreign = new TextEncoder().encode('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}');
    const f = new Uint8Array(8 + foreign.length + 4);
    new DataView(f.buffer).setBigUint64(0, BigInt(foreign.length), true);
    f.set(foreign, 8);
    expect(() => deserializeState(f)).toThrow(/no Imagic metadata/);
    // Metadata under the right key that is not an Imagic state's: refused naming the fields.
    const header = JSON.stringify({ __metadata__: { imagic: JSON.stringify({ format: "other" }) } });
    const meta = new Uint8Array(8 + header.length);
    new DataView(meta.buffer).setBigUint64(0, BigInt(header.length), true);
    meta.set(new TextEncoder().encode(header), 8);
    expect(() => deserializeState(meta)).toThrow(
      /^not a usable Imagic state: metadata: format: .*; version: /,
    );
    const wrongShape = serializeState({ ...sampleState(), contextShape: [7, 176] });
    expect(deserializeState(wrongShape).contextShape).toEqual([7, 176]);
    expect(() => serializeState({ ...sampleState(), contextShape: [7, 7] })).toThrow(
      /e_tgt has 1232 values for shape \[7,7\]/,
    );
  });
});
