// Threads archive after a while without new messages (edits do not count), and an archived thread
// refuses edits and reactions (50083) but takes posts, which unarchive it. The bot's threads stay open
// a week; where one has archived anyway, progress, results, picks and /cancel are posted instead.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

const DAY_MS = 86_400_000;
let w: World;
beforeAll(async () => {
  // Room in the channel's rate limit for the tests' fast progress edits: this file is about archiving.
  w = await world({ fake: { limits: { message: { limit: 20, windowMs: 5000 } } } });
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
});

describe("archived threads", () => {
  it("opens threads that stay open for a week without messages", async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("week"), [opt.string("seeds", "2")]));
    await w.offer(thread, 1, 2);
    expect(w.fake.mustChannel(thread).autoArchiveDuration).toBe(7 * 24 * 60);
    // Three days with no one posting: still open, so a late pick lands in a live thread.
    expect(w.fake.archiveIdleThreads(Date.now() + 3 * DAY_MS).map((t) => t.id)).not.toContain(thread);
  });

  it("keeps reporting in a thread that archived mid-job: posts where it cannot edit, and picks still work", async () => {
    await w.worker(lightweightPipelines({ steps: 20, stepMs: 50 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("archived"), [opt.string("seeds", "2")]));
    const first = await w.postedStartingWith(thread, "⏳");
    // A week and a day later, as far as the thread knows.
    expect(w.fake.archiveIdleThreads(Date.now() + 8 * DAY_MS).map((t) => t.id)).toContain(thread);

    const grid = await w.offer(thread, 1, 2);
    await w.fake.waitFor("the progress message's last word", () =>
      w.posted(thread).some((m) => m.id !== grid.id && m.content.startsWith("✅")),
    );
    const progress = w.posted(thread).filter((m) => m.id !== grid.id);
    // The progress went on in a new message (which unarchived the thread) and ends with ✅ there.
    expect(progress.length).toBeGreaterThan(1);
    expect(progress[0]?.id).toBe(first.id);
    expect(progress.at(-1)?.content).toBe("✅ Fine-tuned on your photo.");
    expect(w.fake.mustChannel(thread).archived).toBe(false);

    // Archived again before the pick: the pick's render reports by posting, and its grid comes.
    w.fake.archiveIdleThreads(Date.now() + 8 * DAY_MS);
    w.fake.react(w.author, grid.id, "1️⃣");
    const sweep = await w.offer(thread, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
    // Every 50083 was followed by a post: nothing stayed unsaid.
    const refusals = w.fake.refused(50083);
    expect(refusals.every((r) => r.method === "PATCH")).toBe(true);
  });

  it("/cancel in an archived thread says so there", async () => {
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("cancel-archived")));
    await w.postedStartingWith(thread, "🕒 Imagic fine-tune: next in line");
    w.fake.archiveIdleThreads(Date.now() + 8 * DAY_MS);
    const cancel = w.fake.runCommand({ name: "cancel", user: w.author, channel: w.fake.mustChannel(thread) });
    expect(await w.ephemeral(cancel)).toMatch(/^• imagic\.train \(job [\w-]+\): cancelled$/);
    const said = await w.postedStartingWith(thread, "🛑");
    expect(said.content).toBe("🛑 Cancelled before it started.");
  });
});
