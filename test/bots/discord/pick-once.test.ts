// A pick is acted on exactly once when the bot process is SIGKILLed between taking it and queueing its
// render. The bot runs in a child process; the author picks a seed on a grid, the fake Discord stalls
// the sweep's progress post (the step between the claim and the queue add) — before Discord sees it, or
// after it created the message but before the bot hears back — and the test kills the bot right there,
// then starts a new one. The pick's claim was never done, so the new bot takes it over by itself (no
// second reaction): one progress message (its nonce), one render job (its fixed id), one sweep grid.
// (Before the fix the claim was final: the pick was lost and reacting again did nothing.)
import { describe, expect, it } from "vitest";
import type { StallRule } from "../../../src/bots/discord/fake/server.js";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import { renderJobIds } from "../support/jobs.js";
import { opt, startDiscordBotProcess, world } from "./support.js";

const RENDERING = "rendering seed";
const t = killTestWorld(world, startDiscordBotProcess);

const progressPost: StallRule["match"] = ({ route, json }) =>
  route === "POST /channels/:id/messages" && String(json.content ?? "").includes(RENDERING);

describe.each([
  { when: "before" as const, what: "before Discord sees the sweep's progress message" },
  { when: "after" as const, what: "after Discord created it, before the bot hears back" },
])("a bot SIGKILLed between a pick's claim and its queue add ($what)", ({ when }) => {
  it("renders the pick once after a restart, without a second reaction", async () => {
    const first = await t.bots.current();
    const channel = t.w.fake.addTextChannel(`pick-killed-${when}`);
    const thread = await t.w.thread(t.w.imagic(channel, [opt.string("seeds", "2")]));
    const grid = await t.w.offer(thread, 1, 2);
    const before = await renderJobIds(t.queue);

    const stalled = t.w.fake.stall({ when, match: progressPost });
    t.w.fake.react(t.w.author, grid.id, "2️⃣");
    await stalled;
    await killBotProcess(first);
    const stalledPost = t.w.posted(thread).filter((m) => m.content.includes(RENDERING));
    expect(stalledPost).toHaveLength(when === "after" ? 1 : 0);
    expect(await renderJobIds(t.queue)).toEqual(before);

    await t.bots.next();
    const sweep = await t.w.offer(thread, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
    // A moment for a second render or post, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    // After the grid: one progress message (the one Discord created before the kill, if it did; edited
    // by the render since) and the sweep.
    const afterGrid = t.w.posted(thread).slice(t.w.posted(thread).indexOf(grid) + 1);
    expect(afterGrid).toHaveLength(2);
    const [progress] = afterGrid;
    expect(progress?.content).toMatch(/rendering seed|Imagic render|Rendered/);
    if (stalledPost[0]) expect(progress?.id).toBe(stalledPost[0].id);
    expect(afterGrid[1]).toBe(sweep);
    const rendered = (await renderJobIds(t.queue)).filter((id) => !before.includes(id));
    expect(rendered).toHaveLength(1);
    expect(t.w.posted(thread).filter((m) => m.reactions.size > 0)).toHaveLength(2);

    // Taken once: reacting again queues nothing more.
    t.w.fake.react(t.w.author, grid.id, "2️⃣");
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await renderJobIds(t.queue)).filter((id) => !before.includes(id))).toEqual(rendered);
  });
});
