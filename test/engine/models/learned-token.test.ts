/**
 * The text encoder with a token's input embedding as an input (textual inversion): with the vocabulary's
 * row it is the text encoder, bit for bit; a new row changes the context from the token's position on;
 * the VJP graph's d/d row matches finite differences.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaussianRng } from "../../../src/engine/diffusion/rng.js";
import { StableDiffusion } from "../../../src/engine/index.js";
import { IO } from "../../../src/engine/models/components.js";
import {
  LEARNED_TOKEN_IO,
  learnedTokenGraph,
  tokenRowsGraph,
} from "../../../src/engine/models/learned-token.js";
import type { HostTensor } from "../../../src/engine/runtime/index.js";

const PROMPT = "a photo of sks dog";

for (const name of ["sd1", "sd2"] as const) {
  describe(`learned-token text encoder: ${name}`, () => {
    let sd: StableDiffusion;
    let tokenId: number;
    let position: number;
    let feeds: Record<string, HostTensor>;
    let d: number;
    const graph = (vjp: boolean) =>
      sd.compile(`test-learned-token:${vjp}`, ({ checkpoint }) => ({
        graph: learnedTokenGraph(checkpoint.textEncoder.weights, checkpoint.textEncoder.config, {
          batch: 1,
          vjp,
        }),
      }));
    const row = (r: Float32Array): HostTensor => ({ dtype: "float32", shape: [1, d], data: r });
    const context = async (r: Float32Array) =>
      (await (await graph(false)).session.run({ ...feeds, [LEARNED_TOKEN_IO.embedding]: row(r) }))[
        IO.lastHiddenState
      ]?.data as Float32Array;
    const vocabularyRow = async () => {
      const { session } = await sd.compile("test-token-rows", ({ checkpoint }) => ({
        graph: tokenRowsGraph(checkpoint.textEncoder.weights, checkpoint.textEncoder.config, 1),
      }));
      const ids: HostTensor = { dtype: "int64", shape: [1], data: BigInt64Array.of(BigInt(tokenId)) };
      return (await session.run({ [IO.inputIds]: ids }))[LEARNED_TOKEN_IO.embedding]?.data as Float32Array;
    };

    beforeAll(async () => {
      sd = await StableDiffusion.load(`test/fixtures/models/${name}/model`, { device: "cpu", dtype: "fp32" });
      d = sd.contextShape[1];
      tokenId = sd.tokenizer.tokenize("sks")[0] as number;
      const ids = sd.tokenize(PROMPT).ids;
      position = ids.indexOf(tokenId);
      feeds = {
        [IO.inputIds]: { dtype: "int64", shape: [1, 77], data: BigInt64Array.from(ids.map(BigInt)) },
        [LEARNED_TOKEN_IO.mask]: {
          dtype: "float32",
          shape: [1, 77, 1],
          data: Float32Array.from(ids.map((id) => (id === tokenId ? 1 : 0))),
        },
      };
    });
    afterAll(async () => {
      await sd?.release();
    });

    it("with the vocabulary's row it is the text encoder; another row changes positions from the token's on", async () => {
      expect(position).toBe(4);
      const vocab = await vocabularyRow();
      expect(Array.from(await context(vocab))).toEqual(Array.from(await sd.encodeText([PROMPT])));
      const base = await context(vocab);
      const moved = await context(vocab.map((v, i) => v + 0.1 * Math.sin(i)));
      for (let pos = 0; pos < 77; pos++) {
        const same = base.subarray(pos * d, (pos + 1) * d).every((v, i) => v === moved[pos * d + i]);
        expect(same, `position ${pos}`).toBe(pos < position);
      }
    });

    it("the VJP graph's d/d row matches central differences (Richardson-extrapolated) within 1e-3", async () => {
      // The random fixtures' encoders bend within 1e-2 of the row, and float32 allows no much smaller
      // step: one Richardson step (h = 4e-3 and 2e-3) cancels the h² term (measured ≤ 1.4e-4 on both).
      const vocab = await vocabularyRow();
      const rng = new GaussianRng(5);
      const upstream = rng.normal(77 * d);
      const { session } = await graph(true);
      const out = await session.run({
        ...feeds,
        [LEARNED_TOKEN_IO.embedding]: row(vocab),
        [LEARNED_TOKEN_IO.upstream]: { dtype: "float32", shape: [1, 77, d], data: upstream },
      });
      const g = out[LEARNED_TOKEN_IO.dEmbedding]?.data as Float32Array;
      const f = async (r: Float32Array) => {
        const c = await context(r);
        let s = 0;
        for (let i = 0; i < c.length; i++) s += (c[i] as number) * (upstream[i] as number);
        return s;
      };
      for (let k = 0; k < 3; k++) {
        const dir = rng.normal(d);
        const central = async (h: number) =>
          ((await f(vocab.map((v, j) => v + h * (dir[j] as number)))) -
            (await f(vocab.map((v, j) => v - h * (dir[j] as number))))) /
          (2 * h);
        const fd = (4 * (await central(2e-3)) - (await central(4e-3))) / 3;
        let analytic = 0;
        for (let j = 0; j < d; j++) analytic += (g[j] as number) * (dir[j] as number);
        expect(Math.abs(fd - analytic) / Math.abs(analytic), `direction ${k}`).toBeLessThan(1e-3);
      }
    });
  });
}
