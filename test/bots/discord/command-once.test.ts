// A command the bot acknowledged is not lost when the bot process is SIGKILLed before its job is queued
// (issue 13). The bot runs in a child process; the fake Discord stalls the thread's "Sending to the
// queue…" post — before Discord sees it, or after it created the message but before the bot hears back —
// the last chat step before the enqueue, and the test kills the bot right there, with no cleanup of any
// kind, then starts a new one. The command's record (src/commands/pending.ts) outlives the process: the
// new bot resumes it from the steps it recorded (answer and thread done, progress message not), posts
// the progress message (in the second case Discord answers with the first one, by its nonce) and queues
// the job under the command's id. (Before the fix nothing recorded the command: no job, and a thread
// saying "Sending to the queue…" for ever.)
//
// Killed before its public answer — the edit of the interaction's deferred "thinking…" message — the
// command is resumed with the interaction's webhook (kept in its record): the new bot edits that same
// message into the answer while the token lives (before, it posted the answer beside a "thinking…"
// that stayed up for 15 minutes, or beside the answer Discord had already filled in), and posts it
// plainly once Discord refuses the token, losing nothing. Killed while it downloads the photo, whose
// link then expires, the new bot says so in place of the "thinking…" (before: in a post beside it).
// Killed at its acknowledgement (the deferral), the command is resumed too: its record is written first.
import { describe, expect, it } from "vitest";
import type { StallRule } from "../../../src/bots/discord/fake/server.js";
import { killBotProcess, killTestWorld } from "../support/bot-process.js";
import { jobIdsInThread } from "../support/jobs.js";
import { opt, startDiscordBotProcess, world } from "./support.js";

const SENDING = "🕒 Sending to the queue";
const SEED_OFFER = "**Pick a seed**";
const t = killTestWorld(world, startDiscordBotProcess);

const progressPost: StallRule["match"] = ({ route, json }) =>
  route === "POST /channels/:id/messages" && String(json.content ?? "").startsWith(SENDING);
const publicAnswer: StallRule["match"] = ({ route, json }) =>
  route === "PATCH /webhooks/:app/:token/messages/@original" &&
  String(json.content ?? "").includes("asked Imagic");
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
    const first = await t.bots.current();
    const stalled = t.w.fake.stall({ when, match });
    const channel = t.w.fake.addTextChannel(`command-killed-${t.w.fake.requests.length}`);
    const interaction = t.w.imagic(channel, [opt.string("seeds", "2")]);
    const thread = await t.w.thread(interaction);
    await stalled;
    await killBotProcess(first);
    expect(await jobIdsInThread(t.queue, thread)).toEqual([]);
    expect(t.w.posted(thread)).toHaveLength(when === "after" && match === progressPost ? 1 : 0);

    await t.bots.next();
    const grid = await t.w.offer(thread, 1, 2);
    // A moment for a second post or job, which must not come.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await jobIdsInThread(t.queue, thread)).toEqual([`imagic-${interaction.id}`]);
    // The grid does not wait for the progress message's last edit.
    const done = "✅ Fine-tuned on your photo.";
    await t.w.fake.waitFor("the progress message's last word", () => t.w.posted(thread)[0]?.content === done);
    expect(t.w.posted(thread).slice(1)).toEqual([grid]);
    expect(grid.content).toContain(SEED_OFFER);
    // The public answer is the interaction's, posted by the first bot and not again.
    expect(t.w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toHaveLength(1);
  });
});

describe("a bot SIGKILLed before it hears back from its public answer", () => {
  /** Kills the bot at the answer's edit; `expire` ages the interaction past its token's 15 minutes. */
  async function killedAtAnswer(when: StallRule["when"], expire = false) {
    const first = await t.bots.current();
    const stalled = t.w.fake.stall({ when, match: publicAnswer });
    const channel = t.w.fake.addTextChannel(`answer-killed-${t.w.fake.requests.length}`);
    const interaction = t.w.imagic(channel, [opt.string("seeds", "2")]);
    await stalled;
    await killBotProcess(first);
    const original = t.w.fake.messages.get(interaction.originalId ?? "");
    expect(original && (original.flags & 128) !== 0).toBe(when === "before");
    if (expire) interaction.dispatchedAt -= 15 * 60_000;
    await t.bots.next();
    const answer = await t.w.fake.waitFor("the resumed answer", () =>
      t.w.posted(channel.id).find((m) => m.content.includes("asked Imagic")),
    );
    const thread = await t.w.fake.waitFor("a thread on the answer", () => answer.threadId);
    await t.w.offer(thread, 1, 2);
    expect(await jobIdsInThread(t.queue, thread)).toEqual([`imagic-${interaction.id}`]);
    return { channel, interaction, answer };
  }

  it.each(["before", "after"] as const)(
    "edits the interaction's deferred response into the answer (killed %s Discord saw the edit)",
    async (when) => {
      const { channel, interaction, answer } = await killedAtAnswer(when);
      expect(answer.id).toBe(interaction.originalId);
      expect(answer.flags & 128).toBe(0);
      expect(t.w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toEqual([answer]);
    },
  );

  it("posts the answer in the channel once the interaction's token has expired", async () => {
    const { channel, interaction, answer } = await killedAtAnswer("before", true);
    expect(answer.id).not.toBe(interaction.originalId);
    expect(t.w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toEqual([answer]);
    // The edit was tried and refused (10015), which cost nothing but the request.
    const refused = t.w.fake.requests.filter(
      (r) => r.path.includes(interaction.token) && r.route.startsWith("PATCH") && r.code === 10015,
    );
    expect(refused).toHaveLength(1);
  });
});

describe("a bot SIGKILLed at its acknowledgement", () => {
  // The record is written before the deferral goes out (src/commands/service.ts). Before, the bot
  // deferred first: killed there, it left a "thinking…" (or Discord's "did not respond") and no record,
  // so the command was lost.
  const deferral: StallRule["match"] = ({ route }) => route === "POST /interactions/:id/:token/callback";

  it.each(["before", "after"] as const)(
    "is resumed by the next bot, which answers and queues the job once (killed %s Discord saw the deferral)",
    async (when) => {
      const first = await t.bots.current();
      const stalled = t.w.fake.stall({ when, match: deferral });
      const channel = t.w.fake.addTextChannel(`ack-killed-${when}-${t.w.fake.requests.length}`);
      const interaction = t.w.imagic(channel, [opt.string("seeds", "2")]);
      await stalled;
      await killBotProcess(first);
      expect(t.w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toEqual([]);
      await t.bots.next();
      const answer = await t.w.fake.waitFor("the resumed answer", () =>
        t.w.posted(channel.id).find((m) => m.content.includes("asked Imagic")),
      );
      // Deferred before the kill: the "thinking…" becomes the answer. Never acknowledged: Discord refuses
      // the webhook (10015), and the answer is a post of its own.
      if (when === "after") expect(answer.id).toBe(interaction.originalId);
      else expect(interaction.originalId).toBeUndefined();
      const thread = await t.w.fake.waitFor("a thread on the answer", () => answer.threadId);
      await t.w.offer(thread, 1, 2);
      expect(await jobIdsInThread(t.queue, thread)).toEqual([`imagic-${interaction.id}`]);
      expect(t.w.posted(channel.id).filter((m) => m.content.includes("asked Imagic"))).toEqual([answer]);
    },
  );
});

it("a resumed command that cannot fetch its photo any more says so in place of the interaction's 'thinking…'", async () => {
  const first = await t.bots.current();
  const stalled = t.w.fake.stall({ when: "before", match: ({ route }) => route === "GET /attachments" });
  const channel = t.w.fake.addTextChannel(`download-killed-${t.w.fake.requests.length}`);
  const photo = t.w.photo();
  const interaction = t.w.imagic(channel, [], photo);
  await stalled;
  await killBotProcess(first);
  t.w.fake.expireAttachment(photo);
  await t.bots.next();
  const original = await t.w.fake.waitFor("the note", () => {
    const message = t.w.fake.messages.get(interaction.originalId ?? "");
    return message?.content.includes("I was restarted") ? message : undefined;
  });
  expect(original.flags & 128).toBe(0);
  expect(original.content).toContain("could not be downloaded from Discord (HTTP 404); send it again");
  expect(t.w.posted(channel.id)).toEqual([original]);
  expect(await t.queue.queue.getJobs()).not.toContainEqual(
    expect.objectContaining({ id: `imagic-${interaction.id}` }),
  );
});
