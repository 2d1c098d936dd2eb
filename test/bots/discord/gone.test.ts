// A job's progress message or its thread can be deleted or locked while the job runs (a moderator
// cleaning up). Discord answers every later edit there with 10008 / 10003 / 50083 (or 50001 once the bot
// may not see it), and a locked thread refuses the post that would replace the message (50083):
// requests that fail for good, which the bot must not repeat every edit interval for the rest of the job
// (401/403/429 answers count toward Discord's invalid-request limit, which bans the bot's IP).
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  // Room in the channel's rate limit for the tests' fast progress edits.
  w = await world({ fake: { limits: { message: { limit: 50, windowMs: 5000 } } } });
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
});

/** The bot's requests to one channel's routes that Discord refused with `code`. */
const refusedIn = (channelId: string, code: number) =>
  w.fake.refused(code).filter((r) => r.path.includes(`/channels/${channelId}`));

/** Waits for the author's job to finish and for the bot's first request in `thread` after that (the grid). */
async function finished(thread: string): Promise<void> {
  const [job] = await w.queue.listForUser(w.author.id);
  const finishedOn = await vi.waitFor(
    async () => {
      const finished = (await w.queue.queue.getJob(job?.jobId ?? ""))?.finishedOn;
      if (finished === undefined) throw new Error("the job has not finished yet");
      return finished;
    },
    { timeout: 30_000, interval: 50 },
  );
  await w.fake.waitFor("the grid's attempt", () =>
    w.fake.requests.some((r) => r.path.includes(`/channels/${thread}`) && r.at >= finishedOn),
  );
}

describe("a progress message that is gone", () => {
  it("is not edited again once Discord says it was deleted, and the grid still comes", async () => {
    await w.worker(lightweightPipelines({ steps: 40, stepMs: 100 }));
    const thread = await w.thread(
      w.imagic(w.fake.addTextChannel("deleted-message"), [opt.string("seeds", "2")]),
    );
    const progress = await w.postedStartingWith(thread, "⏳");
    w.fake.messages.delete(progress.id);

    const grid = await w.offer(thread, 1, 2);
    expect(grid.content).toContain("**Pick a seed**");
    // One refused edit told the bot; the job's other edits and its last word were not sent.
    expect(refusedIn(thread, 10008)).toHaveLength(1);
  });

  it("is neither edited nor replaced again once a moderator locked its thread", async () => {
    await w.worker(lightweightPipelines({ steps: 40, stepMs: 100 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("locked"), [opt.string("seeds", "2")]));
    await w.postedStartingWith(thread, "⏳");
    w.fake.lockThread(thread);
    await finished(thread);
    // Refused once as an edit and once as the post that would replace it; then only the grid was tried.
    expect(refusedIn(thread, 50083).length).toBeLessThanOrEqual(3);
  });

  it("is not edited again once its thread was deleted", async () => {
    await w.worker(lightweightPipelines({ steps: 40, stepMs: 100 }));
    const interaction = w.imagic(w.fake.addTextChannel("deleted-thread"), [opt.string("seeds", "2")]);
    const thread = await w.thread(interaction);
    await w.postedStartingWith(thread, "⏳");
    w.fake.deleteChannel(thread);

    await finished(thread);
    // The thread's lookup failed once for the progress and once for the grid; nothing more was tried.
    expect(refusedIn(thread, 10003).length).toBeLessThanOrEqual(2);
  });
});
