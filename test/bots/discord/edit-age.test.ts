// Discord limits edits of messages older than an hour (30046, answered as a 429 whose wait discord.js
// would sit out). Here "an hour" is 2 s: the bot moves a job's progress to a fresh message before its
// message gets there, and a result never waits for a progress edit.
import { afterEach, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

const OLD_MS = 2000;
let w: World | undefined;
afterEach(async () => {
  await w?.close();
  w = undefined;
});

describe("the edit limit on old messages", () => {
  it("moves a long job's progress to a fresh message before the old one is an hour old", async () => {
    w = await world({
      fake: {
        oldMessageAgeMs: OLD_MS,
        oldMessageEdits: { limit: 1, windowMs: 60_000 },
        // Room for the test's fast progress edits (one per 500 ms) and the new posts, so that none waits.
        limits: { message: { limit: 50, windowMs: 5000 } },
      },
      limits: { maxEditAgeMs: OLD_MS },
    });
    await w.startBot();
    await w.worker(lightweightPipelines({ steps: 15, stepMs: 150 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("long"), [opt.string("seeds", "2")]));
    const grid = await w.offer(thread, 1, 2);
    const live = w;
    await live.fake.waitFor("the progress message's last word", () =>
      live.posted(thread).some((m) => m.id !== grid.id && m.content.startsWith("✅")),
    );

    const progress = w.posted(thread).filter((m) => m.id !== grid.id);
    expect(progress.length).toBeGreaterThan(1);
    // Each replaced message points to its successor; the last one has the job's last word.
    for (const old of progress.slice(0, -1)) {
      expect(old.content).toBe("⏬ Progress continues in a newer message below.");
      expect(old.history.at(-1)?.at ?? Infinity).toBeLessThan(old.createdAt + OLD_MS);
    }
    expect(progress.at(-1)?.content).toBe("✅ Fine-tuned on your photo.");
    expect(w.fake.refused(30046)).toEqual([]);
  });

  it("posts instead, at once, when an edit meets the limit anyway, and the result does not wait", async () => {
    // A limited edit would wait a minute in discord.js.
    w = await world({
      fake: { oldMessageAgeMs: OLD_MS, oldMessageEdits: { limit: 1, windowMs: 60_000 } },
      limits: { maxEditAgeMs: OLD_MS },
    });
    await w.startBot();
    await w.worker(lightweightPipelines({ steps: 12, stepMs: 150 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("limited"), [opt.string("seeds", "2")]));
    const first = await w.postedStartingWith(thread, "⏳");
    // The bot no longer knows when this message was posted (a job from a bot without that record):
    // it keeps editing it until Discord refuses.
    await w.h.redis.client().del(`pe:chat:progress:discord:${first.id}`);
    const grid = await w.offer(thread, 1, 2);
    const live = w;
    await live.fake.waitFor("the progress message's last word", () =>
      live.posted(thread).some((m) => m.id !== grid.id && m.content.startsWith("✅")),
    );
    expect(w.fake.refused(30046).length).toBeGreaterThan(0);
    const progress = w.posted(thread).filter((m) => m.id !== grid.id);
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.at(-1)?.content).toBe("✅ Fine-tuned on your photo.");
  });
});
