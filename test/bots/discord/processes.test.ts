// Two bot processes on one Redis (a rolling deploy, or a bot split over processes): both hear every
// job's events, but only one edits a job's progress message at a time, so the edits keep the
// platform's pace and the job's last word is never overwritten by a late "⏳" from the other.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DiscordBot } from "../../../src/bots/discord/bot.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

const EDIT_INTERVAL_MS = 500;
let w: World;
let second: DiscordBot;
beforeAll(async () => {
  w = await world({
    limits: { minEditIntervalMs: EDIT_INTERVAL_MS },
    progressLeaseMs: 1000,
    // Room for edits at this pace from two processes, so that Discord's limit does not space them.
    fake: { limits: { message: { limit: 50, windowMs: 5000 } } },
  });
  await w.startBot();
  second = await w.connectBot(
    await w.h.client({ consumer: "discord", platform: "discord", limits: { maxQueued: 5 } }),
  );
});
afterAll(async () => {
  await second.stop();
  await w.close();
});

describe("several bot processes", () => {
  it("let one process at a time edit a job's progress message, and the last word stays", async () => {
    await w.worker(lightweightPipelines({ steps: 10, stepMs: 100 }), { previewIntervalMs: 60_000 });
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("two"), [opt.string("seeds", "2")]));
    await w.offer(thread, 1, 2);
    const progress = w.posted(thread)[0];
    if (!progress) throw new Error("no progress message");
    await w.fake.waitFor("the last word", () => progress.content === "✅ Fine-tuned on your photo.");
    // A moment for any late edit to land, which it must not.
    await new Promise((resolve) => setTimeout(resolve, 3 * EDIT_INTERVAL_MS));
    expect(progress.content).toBe("✅ Fine-tuned on your photo.");

    const states = progress.history.map((h) => h.content);
    expect(states.filter((s) => s.startsWith("⏳")).length).toBeGreaterThan(2);
    expect(states.findIndex((s) => s.startsWith("✅"))).toBe(states.length - 1);
    // One editor: its pace, not twice it. (The last word follows the last "⏳" as soon as it may.)
    const edits = progress.history.filter((h) => h.content.startsWith("⏳")).map((h) => h.at);
    for (let i = 1; i < edits.length; i++) {
      expect((edits[i] ?? 0) - (edits[i - 1] ?? 0)).toBeGreaterThanOrEqual(EDIT_INTERVAL_MS - 100);
    }
  });
});
