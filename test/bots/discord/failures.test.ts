// What goes wrong, end to end through discord.js, the fake Discord, the queue and the worker: bad
// attachments, missing permissions, DMs, /swap before its pipeline exists, engine failures, cancel,
// expired state, and the plain commands.

import { PermissionFlagsBits } from "discord.js";
import sharp from "sharp";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ALL_BOT_PERMISSIONS } from "../../../src/bots/discord/fake/server.js";
import { UserFacingError } from "../../../src/errors.js";
import { keys } from "../../../src/queue/keys.js";
import type { PipelineRegistry } from "../../../src/queue/worker.js";
import { lightweightPipelines, recordedSwapPipelines } from "../../queue/support/pipelines.js";
import { opt, PHOTO, type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  // A stalled download is given up after 5 s here (a minute in the bot).
  w = await world({ downloadTimeoutMs: 5000 });
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
});

/** Jobs of any state and type in the queue. */
const jobCount = async () => Object.values(await w.queue.queue.getJobCounts()).reduce((a, b) => a + b, 0);

/** The bot's messages in a channel after the interaction settled (none for refused commands). */
const settle = () => new Promise((r) => setTimeout(r, 300));

describe("bad attachments are refused privately, naming the attachment and the limit, before any job", () => {
  const cases: Array<
    [string, () => Promise<{ name: string; bytes: Uint8Array; type: string; size?: number }>, RegExp]
  > = [
    [
      "not an image (declared type)",
      async () => ({ name: "notes.txt", bytes: Buffer.from("hello"), type: "text/plain" }),
      /^⚠️ `image` \(notes\.txt\) is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image$/m,
    ],
    [
      "too large (declared size, nothing downloaded)",
      async () => ({ name: "huge.png", bytes: PHOTO, type: "image/png", size: 30 * 1024 * 1024 }),
      /^⚠️ `image` \(huge\.png\) is 30\.0 MiB; the limit is 12\.0 MiB$/m,
    ],
    [
      "a file that claims to be a PNG but is not",
      async () => ({ name: "fake.png", bytes: Buffer.from("not really a png at all"), type: "image/png" }),
      /^⚠️ `image` \(fake\.png\) is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image$/m,
    ],
    [
      "animated",
      async () => {
        const frame = (r: number) => ({
          create: { width: 64, height: 64, channels: 3 as const, background: { r, g: 0, b: 0 } },
        });
        const gif = await sharp(
          [await sharp(frame(255)).png().toBuffer(), await sharp(frame(0)).png().toBuffer()],
          {
            join: { animated: true },
          },
        )
          .gif()
          .toBuffer();
        return { name: "anim.gif", bytes: gif, type: "image/gif" };
      },
      /^⚠️ `image` \(anim\.gif\) is animated \(2 frames\); send a still image$/m,
    ],
    [
      "too small",
      async () => ({
        name: "tiny.png",
        bytes: await sharp({ create: { width: 32, height: 32, channels: 3, background: "#fff" } })
          .png()
          .toBuffer(),
        type: "image/png",
      }),
      /^⚠️ `image` \(tiny\.png\) is 32×32; each side must be at least 64 pixels$/m,
    ],
  ];
  for (const [what, make, message] of cases) {
    it(what, async () => {
      const channel = w.fake.addTextChannel("bad");
      const file = await make();
      const attachment = w.fake.attachment(file.name, file.bytes, file.type, { size: file.size });
      const jobs = await jobCount();
      const interaction = w.imagic(channel, [], attachment);
      expect(await w.ephemeral(interaction)).toMatch(message);
      await settle();
      // No public answer stays behind, no thread, no job.
      expect(w.posted(channel.id).filter((m) => (m.flags & 64) === 0)).toEqual([]);
      expect(await jobCount()).toBe(jobs);
    });
  }

  it("a photo whose download stalls is refused, saying so, instead of leaving 'thinking…'", async () => {
    const channel = w.fake.addTextChannel("stalled-download");
    const jobs = await jobCount();
    const stalled = w.fake.stall({ when: "before", match: ({ route }) => route === "GET /attachments" });
    const interaction = w.imagic(channel, [], w.photo("stuck.png"));
    await stalled;
    expect(await w.ephemeral(interaction)).toMatch(
      /^⚠️ `image` \(stuck\.png\) could not be downloaded from Discord \(no answer in 5 s\); send it again$/m,
    );
    expect(await jobCount()).toBe(jobs);
  });

  it("a bad reference of /swap is named by its option", async () => {
    const channel = w.fake.addTextChannel("swap-bad");
    const ref2 = w.fake.attachment("ref2.pdf", Buffer.from("%PDF"), "application/pdf");
    const interaction = w.swap(channel, [w.photo("ref1.png"), ref2]);
    expect(await w.ephemeral(interaction)).toMatch(
      /`reference2` \(ref2\.pdf\) is a PDF document; send a JPEG/,
    );
  });
});

describe("a refusal says what the command was sent with", () => {
  it("the command and its options to copy, in a code span that pings nobody, and the files to attach again", async () => {
    const channel = w.fake.addTextChannel("retype");
    const prompt = `a \`cat\` like <@${w.other.id}>'s`;
    const photo = w.photo("my photo.png");
    const refused = w.imagic(channel, [opt.string("prompt", prompt), opt.number("eta", 3)], photo);
    const text = await w.ephemeral(refused);
    expect(text.split("\n")).toEqual([
      "⚠️ `eta` must be a number from 0 to 1.5 (got 3)",
      `Your command, to copy: \`\`/imagic prompt:a \`cat\` like <@${w.other.id}>'s eta:3\`\``,
      "Attach again: `image` `my photo.png`",
    ]);
    // Nobody is pinged by the mention in the prompt.
    const message = [...w.fake.messages.values()].find((m) => m.content === text);
    expect(message?.pinged.users).toEqual([]);
  });
});

describe("options", () => {
  it("an η out of range and bad seeds are named with their limits", async () => {
    const channel = w.fake.addTextChannel("opts");
    const eta = w.imagic(channel, [opt.number("eta", 3)]);
    expect(await w.ephemeral(eta)).toMatch(/`eta` must be a number from 0 to 1\.5 \(got 3\)/);
    const seeds = w.imagic(channel, [opt.string("seeds", "1,2,3,4,5,6,7,8,9")]);
    expect(await w.ephemeral(seeds)).toMatch(/`seeds` lists 9 seeds; the limit is 8/);
  });
});

describe("permissions and places without threads", () => {
  it("names the permissions it lacks and starts nothing", async () => {
    const channel = w.fake.addTextChannel(
      "no-files",
      ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.AttachFiles & ~PermissionFlagsBits.AddReactions,
    );
    const interaction = w.imagic(channel);
    expect(await w.ephemeral(interaction)).toMatch(
      /missing the Attach Files, Add Reactions permissions in this channel/,
    );
  });

  it("answers in the channel, saying why, when it may not open threads", async () => {
    await w.worker(lightweightPipelines({ steps: 2, stepMs: 10 }));
    const channel = w.fake.addTextChannel(
      "no-threads",
      ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.CreatePublicThreads,
    );
    const interaction = w.imagic(channel, [opt.string("seeds", "2")]);
    const grid = await w.offer(channel.id, 1, 2);
    expect(w.fake.mustMessage(interaction.originalId ?? "").threadId).toBeUndefined();
    const [answer, note, progress] = w.posted(channel.id);
    await w.fake.waitFor("the progress message's last word", () => progress?.content.startsWith("✅"));
    expect(answer?.id).toBe(interaction.originalId);
    expect(note?.content).toBe(
      "ℹ️ I am missing the Create Public Threads permission in this channel, so I answer here instead of in a thread.",
    );
    expect(progress?.content).toBe("✅ Fine-tuned on your photo.");
    expect(grid.content).toContain("**Pick a seed**");
  });

  it("works in a DM with plain replies", async () => {
    await w.worker(lightweightPipelines({ steps: 2, stepMs: 10 }));
    const dm = w.fake.addDmChannel(w.author);
    const interaction = w.imagic(dm, [opt.string("seeds", "2")]);
    const grid = await w.offer(dm.id, 1, 2);
    expect(w.posted(dm.id)[0]?.id).toBe(interaction.originalId);
    expect(w.posted(dm.id)[1]?.content).toBe("ℹ️ Threads do not exist in direct messages, so I answer here.");
    w.fake.react(w.author, grid.id, "1️⃣");
    await w.offer(dm.id, 2, 5);
  });
});

describe("jobs that do not end well", () => {
  it("/swap is validated, queued, and ends with the queue's 'not available yet' while Photoswap is missing", async () => {
    const { "imagic.train": train } = lightweightPipelines();
    await w.worker({ "imagic.train": train });
    const channel = w.fake.addTextChannel("swap");
    const interaction = w.swap(channel, [w.photo("ref.png")]);
    const thread = await w.thread(interaction);
    expect(w.fake.mustChannel(thread).name).toBe("Photoswap: cat");
    const progress = await w.postedStartingWith(thread, "❌");
    expect(progress.content).toBe("❌ swap.concept is not available yet on this engine");
  });

  it("/swap's strengths reach the swap job: the ones set, the paper's for the rest", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.fake.addTextChannel("swap-strengths");
    const interaction = w.swap(
      channel,
      [w.photo("ref.png")],
      [opt.integer("self_map_steps", 40), opt.integer("cross_map_steps", 0), opt.string("seeds", "2")],
    );
    const thread = await w.thread(interaction);
    await w.offer(thread, 1, 2);
    expect(payloads).toHaveLength(1);
    expect(payloads[0]?.options).toMatchObject({ selfOutputSteps: 10, selfMapSteps: 40, crossMapSteps: 0 });
  });

  it("/swap's strengths list reaches the swap job as one strength per grid row; with a single strength it is refused", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.fake.addTextChannel("swap-strength-list");
    const both = w.swap(
      channel,
      [w.photo("ref.png")],
      [opt.string("strengths", "10/25/20,5/15/10"), opt.integer("cross_map_steps", 0)],
    );
    expect(await w.ephemeral(both)).toContain(
      "`strengths` gives every step count itself: leave `cross_map_steps` out, or write it into `strengths`",
    );
    const interaction = w.swap(
      channel,
      [w.photo("ref.png")],
      [opt.string("strengths", "10/25/20,5/15/10"), opt.string("seeds", "2")],
    );
    await w.offer(await w.thread(interaction), 1, 2);
    expect(payloads).toHaveLength(1);
    expect(payloads[0]?.options.strengths).toEqual([
      { selfOutputSteps: 10, selfMapSteps: 25, crossMapSteps: 20 },
      { selfOutputSteps: 5, selfMapSteps: 15, crossMapSteps: 10 },
    ]);
  });

  it("/swap's `size` is refused as /imagic's is, naming the limit; a good one reaches the swap job as width and height", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.fake.addTextChannel("swap-size");
    const jobs = await jobCount();
    const refused: Array<[string, string]> = [
      ["big", '`size` must be a side ("512") or width×height ("768x512"), got "big"'],
      ["100x900", "`size` 100×900 has an aspect ratio of 9.00:1; the limit is 4:1"],
      ["32", "`size` 32×32: each side must be a whole number of pixels from 64 to 2048"],
    ];
    for (const [size, message] of refused) {
      const imagic = w.imagic(channel, [opt.string("size", size)]);
      const swap = w.swap(channel, [w.photo("ref.png")], [opt.string("size", size)]);
      // (Each followed by the command as sent, to copy.)
      const reasons = [await w.ephemeral(imagic), await w.ephemeral(swap)].map((text) => text.split("\n")[0]);
      expect(reasons).toEqual([`⚠️ ${message}`, `⚠️ ${message}`]);
    }
    await settle();
    expect(w.posted(channel.id).filter((m) => (m.flags & 64) === 0)).toEqual([]);
    expect(await jobCount()).toBe(jobs);
    const sized = w.swap(
      channel,
      [w.photo("ref.png")],
      [opt.string("seeds", "2"), opt.string("size", "768x512")],
    );
    await w.offer(await w.thread(sized), 1, 2);
    expect(payloads.map((p) => [p.options.width, p.options.height])).toEqual([[768, 512]]);
  });

  it("an engine failure shows the engine's message on the progress message", async () => {
    const failing: PipelineRegistry = {
      "imagic.train": async (ctx) => {
        await ctx.progress({ stage: "embedding", step: 1, total: 10 });
        throw new UserFacingError("the photo is too dark to learn from");
      },
    };
    await w.worker(failing);
    const channel = w.fake.addTextChannel("fail");
    const thread = await w.thread(w.imagic(channel));
    const progress = await w.postedStartingWith(thread, "❌");
    expect(progress.content).toBe("❌ the photo is too dark to learn from");
  });

  it("/cancel in a job's thread stops that job; elsewhere it stops all, removing waiting ones; /queue shows them", async () => {
    await w.worker(lightweightPipelines({ steps: 400, stepMs: 25 }));
    const channel = w.fake.addTextChannel("cancel");
    const running = await w.thread(w.imagic(channel));
    await w.fake.waitFor("progress", () =>
      w.posted(running)[0]?.content.includes("optimizing the text embedding"),
    );
    const waiting = await w.thread(w.imagic(channel));
    await w.fake.waitFor("a place in line", () => w.posted(waiting)[0]?.content.includes("next in line"));

    const queue = w.fake.runCommand({ name: "queue", user: w.author, channel });
    const lines = (await w.ephemeral(queue)).split("\n");
    expect(lines[0]).toMatch(
      /^⏳ Imagic fine-tune: optimizing the text embedding .* \d+\/400 .*\(job [\w-]+\)$/,
    );
    expect(lines[1]).toMatch(/^🕒 Imagic fine-tune: next in line .*\(job [\w-]+\)$/);

    const inThread = w.fake.runCommand({
      name: "cancel",
      user: w.author,
      channel: w.fake.mustChannel(running),
    });
    expect(await w.ephemeral(inThread)).toMatch(
      /^• imagic\.train \(job [\w-]+\): stopping after the current step$/,
    );
    const stopped = await w.postedStartingWith(running, "🛑");
    expect(stopped.content).toBe("🛑 Cancelled.");
    expect(w.posted(running).filter((m) => m.reactions.size > 0)).toEqual([]);

    // The thread's /cancel left the other job alone. With no engine to run it (a worker that stops hands its
    // job back), /cancel in the channel removes it from the queue and says so on its progress message.
    await w.h.stopWorkers();
    const everywhere = w.fake.runCommand({ name: "cancel", user: w.author, channel });
    expect(await w.ephemeral(everywhere)).toMatch(/^• imagic\.train \(job [\w-]+\): cancelled$/);
    const removed = await w.postedStartingWith(waiting, "🛑");
    expect(removed.content).toBe("🛑 Cancelled before it started.");
  });

  it("/cancel in a thread without an edit of the user's (another's edit) cancels nothing, and says how to cancel all", async () => {
    const channel = w.fake.addTextChannel("cancel-others");
    const mine = await w.thread(w.imagic(channel));
    const theirs = await w.thread(w.imagic(channel, [], w.photo(), w.other));
    await w.postedStartingWith(mine, "🕒 Imagic fine-tune:");
    await w.postedStartingWith(theirs, "🕒 Imagic fine-tune:");
    const before = (await w.queue.listForUser(w.author.id)).map((j) => j.jobId);
    expect(before).toHaveLength(1);

    // In bob's edit's thread, "/cancel: just that one" can only mean bob's edit, which ann may not cancel.
    const cancel = w.fake.runCommand({ name: "cancel", user: w.author, channel: w.fake.mustChannel(theirs) });
    expect(await w.ephemeral(cancel)).toBe(
      "You have no edits queued or running in this thread. Run `/cancel` outside a thread to cancel all of yours (1).",
    );
    expect((await w.queue.listForUser(w.author.id)).map((j) => j.jobId)).toEqual(before);
    expect(await w.queue.listForUser(w.other.id)).toHaveLength(1);
    expect(w.posted(mine).some((m) => m.content.startsWith("🛑"))).toBe(false);
  });

  it("a pick whose state expired says so and offers to start again", async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const channel = w.fake.addTextChannel("expired");
    const thread = await w.thread(w.imagic(channel, [opt.string("seeds", "2")]));
    const grid = await w.offer(thread, 1, 2);
    const train = (await w.queue.queue.getJobs(["completed"])).find((j) => j.name === "imagic.train");
    if (!train) throw new Error("no completed imagic.train job");
    // What the blob TTL does, now.
    await w.h.redis.client().del(keys.blob((train.returnvalue as { stateBlobId: string }).stateBlobId));

    const jobs = await jobCount();
    w.fake.react(w.author, grid.id, "1️⃣");
    const expired = await w.postedStartingWith(thread, "⌛");
    expect(expired.content).toMatch(
      /the fine-tune of this edit has expired .* Run `\/imagic` again to start again/,
    );
    expect(await jobCount()).toBe(jobs);
  });
});

describe("plain commands", () => {
  it("/help and /queue answer privately", async () => {
    const channel = w.fake.addTextChannel("help");
    const help = w.fake.runCommand({ name: "help", user: w.author, channel });
    const helpText = await w.ephemeral(help);
    expect(helpText).toContain("/imagic image:<photo>");
    expect(helpText).toContain('`strengths` for several at once ("10/25/20,5/15/10", one grid row each)');
    expect(help.callbackType).toBe(4);
    const queue = w.fake.runCommand({ name: "queue", user: w.other, channel });
    expect(await w.ephemeral(queue)).toBe("You have no edits queued or running.");
  });
});
