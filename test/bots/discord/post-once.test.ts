// A result is posted exactly once when the bot process is SIGKILLed mid-post (issue 13). The bot runs
// in a child process; the fake Discord stalls the result's post — before Discord sees it, or after it
// created the message but before the bot hears back — and the test kills the bot right there, with no
// cleanup of any kind, then starts a new one. The claim taken before the post was never confirmed, so
// the new bot delivers the result again: posted anew in the first case, and in the second answered by
// Discord with the first message (the post's nonce, enforce_nonce), which then gets its reactions.
// (Before the fix the claim was final: the first case lost the result, the second left a grid nobody
// could pick from.)
import { describe, expect, it } from "vitest";
import type { StallRule } from "../../../src/bots/discord/fake/server.js";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import { opt, startDiscordBotProcess, world } from "./support.js";

const SEED_OFFER = "**Pick a seed**";
const t = killTestWorld(world, startDiscordBotProcess);

const gridPost: StallRule["match"] = ({ route, json }) =>
  route === "POST /channels/:id/messages" && String(json.content ?? "").includes(SEED_OFFER);

describe.each([
  { when: "before" as const, what: "before Discord sees the grid" },
  { when: "after" as const, what: "after Discord created the grid, before the bot hears back" },
])("a bot SIGKILLed mid-post ($what)", ({ when }) => {
  it("posts the grid once after a restart, with its reactions, and the pick works", async () => {
    const first = await t.bots.current();
    const stalled = t.w.fake.stall({ when, match: gridPost });
    const channel = t.w.fake.addTextChannel(`killed-${when}`);
    const thread = await t.w.thread(t.w.imagic(channel, [opt.string("seeds", "2")]));
    await stalled;
    await killBotProcess(first);
    const grids = () => t.w.posted(thread).filter((m) => m.content.includes(SEED_OFFER));
    expect(grids()).toHaveLength(when === "after" ? 1 : 0);

    await t.bots.next();
    const grid = await t.w.offer(thread, 1, 2);
    // A moment for a second post, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(grids()).toEqual([grid]);
    const progress = t.w.posted(thread)[0];
    expect(progress?.content).toBe("✅ Fine-tuned on your photo.");
    // The new bot's post carried the first one's nonce: Discord answered with the first message.
    const posts = t.w.fake.requests.filter((r) => r.route === "POST /channels/:id/messages");
    expect(posts.length).toBeGreaterThanOrEqual(when === "after" ? 2 : 1);

    // The pick record was saved by the redelivery.
    t.w.fake.react(t.w.author, grid.id, "2️⃣");
    const sweep = await t.w.offer(thread, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
  });
});
