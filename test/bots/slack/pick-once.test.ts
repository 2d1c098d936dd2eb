// A pick is acted on exactly once when the Slack bot process is SIGKILLed between taking it and queueing
// its render (test/bots/discord/pick-once.test.ts on Slack, whose message ids and post lookup differ):
// the fake Slack stalls the sweep's progress post (chat.postMessage) before or after Slack took it, the
// test kills the bot there and starts a new one, which takes the pick over by itself (no second
// reaction): one progress message (found by its metadata), one render job (its fixed id), one sweep.
import { describe, expect, it } from "vitest";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import { renderJobIds } from "../support/jobs.js";
import { startSlackBotProcess, world } from "./support.js";

const RENDERING = "rendering seed";
const t = killTestWorld(world, startSlackBotProcess);

describe.each([
  { when: "before" as const, what: "before Slack takes the sweep's progress message" },
  { when: "after" as const, what: "after Slack took it, before the bot hears back" },
])("a Slack bot SIGKILLed between a pick's claim and its queue add ($what)", ({ when }) => {
  it("renders the pick once after a restart, without a second reaction", async () => {
    const first = await t.bots.current();
    const started = await t.w.imagic(t.w.channel(`pick-killed-${when}`), { seeds: "2" });
    const thread = await t.w.thread(started);
    const grid = await t.w.offer(started.channel, thread, 1, 2);
    const before = await renderJobIds(t.queue);

    const stalled = t.w.fake.stall({
      when,
      match: ({ method, args }) =>
        method === "chat.postMessage" && String(args.text ?? "").includes(RENDERING),
    });
    t.w.fake.react(t.w.author, grid, "two");
    await stalled;
    await killBotProcess(first);
    const stalledPost = t.w.posted(started.channel, thread).filter((m) => m.text.includes(RENDERING));
    expect(stalledPost).toHaveLength(when === "after" ? 1 : 0);
    expect(await renderJobIds(t.queue)).toEqual(before);

    await t.bots.next();
    const sweep = await t.w.offer(started.channel, thread, 2, 5);
    expect(sweep.text).toContain("*Pick the final image*");
    // A moment for a second render or post, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    // After the grid: one progress message (the one Slack took before the kill, if it did; edited by the
    // render since) and the sweep.
    const posted = t.w.posted(started.channel, thread);
    const afterGrid = posted.slice(posted.indexOf(grid) + 1);
    expect(afterGrid).toHaveLength(2);
    const [progress] = afterGrid;
    expect(progress?.text).toMatch(/rendering seed|Imagic render|Rendered/);
    if (stalledPost[0]) expect(progress?.ts).toBe(stalledPost[0].ts);
    expect(afterGrid[1]).toBe(sweep);
    const rendered = (await renderJobIds(t.queue)).filter((id) => !before.includes(id));
    expect(rendered).toHaveLength(1);

    // Taken once: reacting again queues nothing more.
    t.w.fake.react(t.w.author, grid, "two");
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await renderJobIds(t.queue)).filter((id) => !before.includes(id))).toEqual(rendered);
  });
});
