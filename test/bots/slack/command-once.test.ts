// A command the Slack bot acknowledged is not lost, nor done twice, when the bot process is SIGKILLed
// before its job is queued (test/bots/discord/command-once.test.ts on Slack, whose thread is the public
// answer's ts and whose posts have no idempotency key but their metadata). The bot runs in a child
// process; the fake Slack stalls a chat.postMessage of the command's — the "Sending to the queue…"
// progress post (the last chat step before the enqueue) before or after Slack took it, or the public
// answer after Slack took it — and the test kills the bot right there, with no cleanup, then starts a new
// one. The command's record (src/commands/pending.ts) outlives the process: the new bot resumes it from
// the steps it recorded, finds a post Slack took by its metadata instead of posting it again, and queues
// the job under the command's id: one answer, one progress message, one job, one grid.
import { describe, expect, it } from "vitest";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import { jobIdsInThread } from "../support/jobs.js";
import type { SlackStallRule } from "./fake/server.js";
import { startSlackBotProcess, world } from "./support.js";

const SENDING = "🕒 Sending to the queue";
const ANSWER = "asked Imagic";
const SEED_OFFER = "*Pick a seed*";
/** The cases run so far: each gets its own channel. */
let cases = 0;
const t = killTestWorld(world, startSlackBotProcess);

const postOf =
  (text: string): SlackStallRule["match"] =>
  ({ method, args }) =>
    method === "chat.postMessage" && String(args.text ?? "").includes(text);

describe.each<{ what: string; stall: SlackStallRule; progressBefore: number }>([
  {
    what: "before Slack takes the progress message",
    stall: { when: "before", match: postOf(SENDING) },
    progressBefore: 0,
  },
  {
    what: "after Slack took the progress message, before the bot hears back",
    stall: { when: "after", match: postOf(SENDING) },
    progressBefore: 1,
  },
  // The thread is the answer's ts: an answer posted again would start a second thread.
  {
    what: "after Slack took the public answer, before the bot hears back",
    stall: { when: "after", match: postOf(ANSWER) },
    progressBefore: 0,
  },
])("a Slack bot SIGKILLed between a command's answer and its job ($what)", ({ stall, progressBefore }) => {
  it("queues the job once after a restart, and the thread gets one progress message and one grid", async () => {
    const first = await t.bots.current();
    const stalled = t.w.fake.stall(stall);
    const started = await t.w.imagic(t.w.channel(`command-killed-${++cases}`), { seeds: "2" });
    const thread = await t.w.thread(started);
    await stalled;
    await killBotProcess(first);
    expect(await jobIdsInThread(t.queue, thread)).toEqual([]);
    expect(t.w.posted(started.channel, thread)).toHaveLength(progressBefore);

    await t.bots.next();
    const grid = await t.w.offer(started.channel, thread, 1, 2);
    // A moment for a second post or job, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const jobs = await jobIdsInThread(t.queue, thread);
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatch(/^imagic-/);
    // The grid does not wait for the progress message's last edit.
    const done = "✅ Fine-tuned on your photo.";
    await t.w.fake.waitFor(
      "the progress message's last word",
      () => t.w.posted(started.channel, thread)[0]?.text === done,
    );
    expect(t.w.posted(started.channel, thread).slice(1)).toEqual([grid]);
    expect(grid.text).toContain(SEED_OFFER);
    // One public answer (the thread's), whichever bot posted it.
    expect(t.w.fake.posted(started.channel.id).filter((m) => m.text.includes(ANSWER))).toHaveLength(1);
  });
});
