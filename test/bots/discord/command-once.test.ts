// A command the bot acknowledged is not lost when the bot process is SIGKILLed before its job is queued
// (issue 13). The bot runs in a child process; the fake Discord stalls the thread's "Sending to the
// queue…" post — before Discord sees it, or after it created the message but before the bot hears back —
// the last chat step before the enqueue, and the test kills the bot right there, with no cleanup of any
// kind, then starts a new one. The command's record (src/commands/pending.ts) outlives the process: the
// new bot resumes it from the steps it recorded (answer and thread done, progress message not), posts
// the progress message (in the second case Discord answers with the first one, by its nonce) and queues
// the job under the command's id. (Before the fix nothing recorded the command: no job, and a thread
// saying "Sending to the queue…" for ever.)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StallRule } from "../../../src/bots/discord/fake/server.js";
import type { QueueClient } from "../../../src/queue/client.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { botProcesses, killBotProcess } from "../support/bot-process.js";
import { jobIdsInThread } from "../support/jobs.js";
import { opt, startDiscordBotProcess, type World, world } from "./support.js";

const SENDING = "🕒 Sending to the queue";
const SEED_OFFER = "**Pick a seed**";
let w: World;
/** A client on the world's queue, to look at the jobs the bot processes queued. */
let queue: QueueClient;
const bots = botProcesses(() => startDiscordBotProcess(w));

beforeAll(async () => {
  w = await world();
  await w.worker(lightweightPipelines({ steps: 3, stepMs: 20 }));
  queue = await w.h.client();
});
afterAll(async () => {
  await bots.close();
  await queue.close();
  await w.close();
});

const progressPost: StallRule["match"] = ({ route, json }) =>
  route === "POST /channels/:id/messages" && String(json.content ?? "").startsWith(SENDING);
const threadOpen: StallRule["match"] = ({ route }) => route === "POST /channels/:id/messages/:id/threads";

describe.each([
  { when: "before" as const, match: progressPost, what: "before Discord sees the progress message" },
  {
    when: "after" as const,
    match: progressPost,
    what: "after Discord created the progress message, before the bot hears back",
  },
  // The new bot's thread request is refused (160004: opened already), and it carries on in that thread.
  {
    when: "after" as const,
    match: threadOpen,
    what: "after Discord opened the thread, before the bot hears back",
  },
])("a bot SIGKILLed between a command's answer and its job ($what)", ({ when, match }) => {
  it("queues the job once after a restart, and the thread gets one progress message and one grid", async () => {
    const first = await bots.current();
    const stalled = w.fake.stall({ when, match });
    const channel = w.fake.addTextChannel(`command-killed-${w.fake.requests.length}`);
    const interaction = w.imagic(channel, [opt.string("seeds", "2")]);
    const thread = await w.thread(interaction);
    await stalled;
    await killBotProcess(first);
    expect(await jobIdsInThread(queue, thread)).toEqual([]);
    expect(w.posted(thread)).toHaveLength(when === "after" && match === progressPost ? 1 : 0);

    await bots.next();
    const grid = await w.offer(thread, 1, 2);
    // A moment for a second post or job, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await jobIdsInThread(queue, thread)).toEqual([`imagic-${interaction.id}`]);
    // The grid does not wait for the progress message's last edit.
    const done = "✅ Fine-tuned on your photo.";
    await w.fake.waitFor("the progress message's last word", () => w.posted(thread)[0]?.content === done);
    expect(w.posted(thread).slice(1)).toEqual([grid]);
    expect(grid.content).toContain(SEED_OFFER);
    // The public answer is the interaction's, posted by the first bot and not again.
    expect(w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toHaveLength(1);
  });
});
