// The bot process restarts while a job runs: the job finishes while no bot is connected, the new bot
// picks up the events it missed, posts the grid once in the same thread, and picks keep working.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { until } from "../../queue/support/setup.js";
import { opt, type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  // Discord's own pace for progress edits (one per 2 s), not the faster one the other tests use.
  w = await world({ limits: { minEditIntervalMs: 2000 } });
  await w.startBot();
});
afterAll(() => w.close());

describe("bot restart mid-job", () => {
  it("posts the result once in the job's thread after a restart, and the pick still works", async () => {
    await w.worker(lightweightPipelines({ steps: 25, stepMs: 100 }), { previewIntervalMs: 60_000 });
    const channel = w.fake.addTextChannel("restart");
    const thread = await w.thread(w.imagic(channel, [opt.string("seeds", "2")]));
    const progress = await w.fake.waitFor("a few progress edits", () => {
      const message = w.posted(thread)[0];
      return message && message.history.filter((h) => h.content.startsWith("⏳")).length >= 2 && message;
    });

    // Progress edits keep Discord's pace: at least 2 s apart (the first edit replaces "queued").
    const times = progress.history.slice(1).map((h) => h.at);
    for (let i = 1; i < times.length; i++)
      expect((times[i] ?? 0) - (times[i - 1] ?? 0)).toBeGreaterThanOrEqual(1950);

    const watcher = await w.h.client();
    const [job] = await watcher.queue.getJobs(["active"]);
    await w.stopBot();
    expect(w.fake.connectedBots).toBe(0);
    await until(
      async () => (await job?.getState()) === "completed",
      20_000,
      "the job to finish while the bot is down",
    );
    const editsWhileDown = progress.history.length;
    expect(w.posted(thread)).toHaveLength(1);

    await w.startBot();
    const grid = await w.offer(thread, 1, 2);
    // Events missed while down are replayed in order (progress, then the result), so the result is last.
    await w.fake.waitFor("the progress message's last word", () => progress.content.startsWith("✅"));
    expect(progress.content).toBe("✅ Fine-tuned on your photo.");
    expect(progress.history.length).toBeGreaterThan(editsWhileDown);
    await new Promise((r) => setTimeout(r, 500));
    expect(w.posted(thread).filter((m) => m.content.includes("**Pick a seed**"))).toHaveLength(1);

    // The pick record lived in Redis, not in the old process.
    w.fake.react(w.author, grid.id, "2️⃣");
    const sweep = await w.offer(thread, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
    expect(w.fake.requests.filter((r) => r.status === 429 && !r.route.includes("/reactions/"))).toEqual([]);
  });

  it("takes a pick in a DM made after a restart (the DM channel is no longer cached)", async () => {
    await w.h.stopWorkers();
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const dm = w.fake.addDmChannel(w.author);
    w.imagic(dm, [opt.string("seeds", "2")]);
    const grid = await w.offer(dm.id, 1, 2);
    await w.stopBot();
    await w.startBot();
    // Nothing of this DM is in the new process's cache: the reaction arrives for an unknown channel.
    expect(w.bot.client.channels.cache.has(dm.id)).toBe(false);
    w.fake.react(w.author, grid.id, "2️⃣");
    const sweep = await w.offer(dm.id, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
  });
});
