/**
 * StableDiffusion.compile: a pipeline's own graph goes through the facade's session cache — built once
 * per key, from the checkpoint the engine holds, computing what the built-in component computes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StableDiffusion } from "../../src/engine/index.js";
import { IO, textEncoderGraph } from "../../src/engine/models/components.js";

const MODEL = "test/fixtures/models/sd1/model";
let sd: StableDiffusion;

beforeAll(async () => {
  sd = await StableDiffusion.load(MODEL, { device: "cpu", dtype: "fp32" });
});
afterAll(async () => {
  await sd?.release();
});

describe("StableDiffusion.compile", () => {
  it("builds a pipeline's graph once per key and runs it like the built-in component", async () => {
    let builds = 0;
    const build = () =>
      sd.compile("test-text:1", ({ checkpoint }) => {
        builds++;
        const te = checkpoint.textEncoder;
        return { graph: textEncoderGraph(te.weights, te.config, 1) };
      });
    const first = await build();
    const second = await build();
    expect(builds).toBe(1);
    expect(second.session).toBe(first.session);
    const ids = BigInt64Array.from(sd.tokenize("a photo of a cat").ids.map(BigInt));
    const out = await first.session.run({ [IO.inputIds]: { dtype: "int64", shape: [1, 77], data: ids } });
    const ours = out[IO.lastHiddenState]?.data as Float32Array;
    expect(Array.from(ours)).toEqual(Array.from(await sd.encodeText(["a photo of a cat"])));
  });

  it("does not keep a failed build, so a later call can retry", async () => {
    await expect(
      sd.compile("test-fails", () => {
        throw new Error("no graph");
      }),
    ).rejects.toThrow("no graph");
    let built = false;
    await sd.compile("test-fails", ({ checkpoint }) => {
      built = true;
      const te = checkpoint.textEncoder;
      return { graph: textEncoderGraph(te.weights, te.config, 1) };
    });
    expect(built).toBe(true);
  });
});
