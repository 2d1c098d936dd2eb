// The Slack bot restarts while a job runs: the job finishes while no bot is connected, the new bot picks
// up the events it missed, posts the grid once in the same thread, and picks keep working.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { until } from "../../queue/support/setup.js";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  // Slack's own pace for progress edits (one per 3 s per message), not the faster one the other tests use.
  w = await world({ limits: { minEditIntervalMs: 3000 } });
  await w.startBot();
});
afterAll(() => w.close());

describe("bot restart mid-job", () => {
  it("posts the result once in the job's thread after a restart, and the pick still works", async () => {
    await w.worker(lightweightPipelines({ steps: 30, stepMs: 100 }), { previewIntervalMs: 60_000 });
    const started = await w.imagic(w.channel("restart"), { seeds: "2" });
    const thread = await w.thread(started);
    const progress = await w.fake.waitFor("two progress edits", () => {
      const message = w.posted(started.channel, thread)[0];
      return message && message.history.filter((h) => h.text.startsWith("⏳")).length >= 2 && message;
    });

    // Progress edits keep Slack's pace: at least 3 s apart (the first edit replaces "queued").
    const times = progress.history.slice(1).map((h) => h.at);
    for (let i = 1; i < times.length; i++)
      expect((times[i] ?? 0) - (times[i - 1] ?? 0)).toBeGreaterThanOrEqual(2950);

    const watcher = await w.h.client();
    const [job] = await watcher.queue.getJobs(["active"]);
    await w.stopBot();
    await w.fake.waitFor("the Socket Mode connection to close", () => w.fake.deliveries.connected === 0);
    await until(
      async () => (await job?.getState()) === "completed",
      20_000,
      "the job to finish while the bot is down",
    );
    const editsWhileDown = progress.history.length;
    expect(w.posted(started.channel, thread)).toHaveLength(1);

    await w.startBot();
    const grid = await w.offer(started.channel, thread, 1, 2);
    // Events missed while down are replayed in order (progress, then the result), so the result is last.
    await w.fake.waitFor("the progress message's last word", () => progress.text.startsWith("✅"));
    expect(progress.text).toBe("✅ Fine-tuned on your photo.");
    expect(progress.history.length).toBeGreaterThan(editsWhileDown);
    await new Promise((r) => setTimeout(r, 500));
    expect(w.posted(started.channel, thread).filter((m) => m.text.includes("*Pick a seed*"))).toHaveLength(1);

    // The pick record lived in Redis, not in the old process.
    w.fake.react(w.author, grid, "two");
    const sweep = await w.offer(started.channel, thread, 2, 5);
    expect(sweep.text).toContain("*Pick the final image*");
    expect(w.fake.calls.filter((c) => c.status === 429)).toEqual([]);
  });
});
