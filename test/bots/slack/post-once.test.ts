// A result is posted exactly once when the Slack bot process is SIGKILLed mid-post (issue 13). The bot
// runs in a child process; the fake Slack stalls a call of the grid's post — chat.postMessage before or
// after Slack took it, or the chat.update that attaches the grid's file — and the test kills the bot right
// there, with no cleanup, then starts a new one. The new bot delivers the result again and, Slack having
// no idempotency key, first looks in the thread (conversations.replies) for a message whose metadata
// names this job's grid: found, it attaches the file if the post was cut off before it, and adds the
// reactions; not found, it posts. (Before the fix the first delivery's claim was final: the result was
// lost, or left without its image or reactions.)
import { describe, expect, it } from "vitest";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import type { SlackStallRule } from "./fake/server.js";
import { startSlackBotProcess, world } from "./support.js";

const SEED_OFFER = "*Pick a seed*";
const t = killTestWorld(world, startSlackBotProcess);

const gridText = (args: Record<string, unknown>) => String(args.text ?? "").includes(SEED_OFFER);

describe.each<{ what: string; stall: SlackStallRule; before: { grids: number; files: number } }>([
  {
    what: "before Slack takes the grid's post",
    stall: { when: "before", match: ({ method, args }) => method === "chat.postMessage" && gridText(args) },
    before: { grids: 0, files: 0 },
  },
  {
    what: "after Slack took the grid's post, before its file is attached",
    stall: { when: "after", match: ({ method, args }) => method === "chat.postMessage" && gridText(args) },
    before: { grids: 1, files: 0 },
  },
  {
    what: "after the grid's file is attached, before the bot hears back",
    stall: {
      when: "after",
      match: ({ method, args }) => method === "chat.update" && gridText(args) && args.file_ids !== undefined,
    },
    before: { grids: 1, files: 1 },
  },
])("a Slack bot SIGKILLed mid-post ($what)", ({ stall, before }) => {
  it("posts the grid once after a restart, with its image and reactions, and the pick works", async () => {
    const first = await t.bots.current();
    const stalled = t.w.fake.stall(stall);
    const started = await t.w.imagic(t.w.channel("killed"), { seeds: "2" });
    const thread = await t.w.thread(started);
    await stalled;
    await killBotProcess(first);
    const grids = () => t.w.posted(started.channel, thread).filter((m) => m.text.includes(SEED_OFFER));
    expect(grids()).toHaveLength(before.grids);
    expect(grids().flatMap((m) => m.files)).toHaveLength(before.files);

    await t.bots.next();
    const grid = await t.w.offer(started.channel, thread, 1, 2);
    await t.w.fake.waitFor("the grid's image", () => t.w.fake.filesOf(grid).length === 1);
    // A moment for a second post, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(grids()).toEqual([grid]);
    expect(grid.metadata?.event_payload).toMatchObject({ role: "grid" });
    expect(t.w.posted(started.channel, thread)[0]?.text).toBe("✅ Fine-tuned on your photo.");

    // The pick record was saved by the redelivery.
    t.w.fake.react(t.w.author, grid, "two");
    const sweep = await t.w.offer(started.channel, thread, 2, 5);
    expect(sweep.text).toContain("*Pick the final image*");
  });
});
