/**
 * The CLIP text encoder's causal mask: position i sees tokens 0…i only, so changing a token changes the
 * hidden states from its position on and none before it.
 */
import { describe, expect, it } from "vitest";
import { openCheckpoint } from "../../../src/engine/models/checkpoint.js";
import { IO, textEncoderGraph } from "../../../src/engine/models/components.js";
import { createSession } from "../../../src/engine/runtime/index.js";

describe("CLIP text encoder", () => {
  it("is causal: a token changes its own and later positions only", async () => {
    const ckpt = openCheckpoint("test/fixtures/models/sd2/model");
    const d = ckpt.textEncoder.config.hidden_size;
    const session = await createSession(
      textEncoderGraph(ckpt.textEncoder.weights, ckpt.textEncoder.config, 2),
      {
        device: "cpu",
      },
    );
    try {
      const a = ckpt.tokenizer.encode("a photo of a cat sitting on a green mat").ids;
      const b = [...a];
      const changed = 5;
      b[changed] = (a[changed] as number) + 1;
      const ids = BigInt64Array.from([...a, ...b].map(BigInt));
      const out = await session.run({ [IO.inputIds]: { dtype: "int64", shape: [2, 77], data: ids } });
      const h = out[IO.lastHiddenState]?.data as Float32Array;
      const row = (item: number, pos: number) => h.subarray((item * 77 + pos) * d, (item * 77 + pos + 1) * d);
      for (let pos = 0; pos < 77; pos++) {
        const same = row(0, pos).every((v, i) => v === row(1, pos)[i]);
        expect(same, `position ${pos}`).toBe(pos < changed);
      }
    } finally {
      await session.release();
    }
  });
});
