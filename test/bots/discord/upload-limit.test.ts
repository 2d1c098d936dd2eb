// Discord refuses files over its upload limit (413, error 40005): the bot sends a result that does not
// fit as a JPEG that does. Here the limit is shrunk to 4 KiB so that the test grids (9 KB PNGs) exceed it.
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

const LIMIT = 4096;
let w: World;
beforeAll(async () => {
  w = await world({ fake: { maxFileBytes: LIMIT }, limits: { maxUploadBytes: LIMIT } });
  await w.startBot();
  await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
});
afterAll(() => w.close());

describe("upload limit", () => {
  it("posts a grid over the limit as a JPEG under it, and Discord accepts it", async () => {
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("small"), [opt.string("seeds", "3")]));
    const grid = await w.offer(thread, 1, 3);
    const [file] = grid.attachments;
    expect(file?.filename).toBe("grid.jpg");
    expect(file?.size).toBeLessThanOrEqual(LIMIT);
    expect((await sharp(file?.bytes).metadata()).format).toBe("jpeg");
    const stored = (await w.queue.queue.getJobs(["completed"]))[0]?.returnvalue as { gridBlobId: string };
    expect((await w.h.blobs.get(stored.gridBlobId))?.byteLength).toBeGreaterThan(LIMIT);
    expect(w.fake.requests.filter((r) => r.status === 413)).toEqual([]);
  });
});
