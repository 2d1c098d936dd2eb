// What goes wrong, end to end through Bolt, the fake Slack, the queue and the worker: bad files, forms
// submitted with nothing, files the bot may not read, channels it is not in, /swap on a worker without its
// pipelines, engine failures, cancel, expired state, and the plain commands.
import sharp from "sharp";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EDIT_SHORTCUT } from "../../../src/bots/slack/bot.js";
import { UserFacingError } from "../../../src/errors.js";
import { keys } from "../../../src/queue/keys.js";
import type { PipelineRegistry } from "../../../src/queue/worker.js";
import { lightweightPipelines, recordedSwapPipelines } from "../../queue/support/pipelines.js";
import type { FakeFile, FakeView } from "./fake/server.js";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world();
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
});

/** Jobs of any state and type in the queue. */
const jobCount = async () => Object.values(await w.queue.queue.getJobCounts()).reduce((a, b) => a + b, 0);
const settle = () => new Promise((r) => setTimeout(r, 300));

/** Submits the /imagic form and waits for the inline errors the bot answers with (the form stays open). */
async function inlineErrors(view: FakeView, values: Parameters<World["fake"]["submit"]>[2]) {
  const submission = w.fake.submit(view, w.author, values, { client: false });
  await submission.settled;
  expect(submission.ackedAt).toBeDefined();
  expect(view.open).toBe(true);
  return (submission.response as { response_action: string; errors: Record<string, string> }).errors;
}

describe("bad files are refused, naming the field and the limit, before any job", () => {
  it("a file that declares another type, or too large a size, is refused under the field while the form is open", async () => {
    const channel = w.channel("declared");
    const jobs = await jobCount();
    const view = await w.form(channel, "/imagic");
    const notes = w.photo("notes.txt", Buffer.from("hello"));
    expect(await inlineErrors(view, { image: [notes], prompt: "a cat" })).toEqual({
      image: "image (notes.txt) is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
    });
    // The form stayed open: the user can send it again (here with another bad file).
    const huge = w.photo("huge.png", undefined, { size: 30 * 1024 * 1024 });
    expect(await inlineErrors(view, { image: [huge], prompt: "a cat" })).toEqual({
      image: "image (huge.png) is 30.0 MiB; the limit is 12.0 MiB",
    });
    await settle();
    expect(w.fake.posted(channel.id)).toEqual([]);
    expect(await jobCount()).toBe(jobs);
  });

  const decoded: Array<[string, () => Promise<FakeFile>, RegExp]> = [
    [
      "a file that claims to be a PNG but is not",
      async () => w.photo("fake.png", Buffer.from("not really a png at all"), { mimetype: "image/png" }),
      /^⚠️ `image` \(fake\.png\) is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image$/,
    ],
    [
      "an animation",
      async () => {
        const frame = (r: number) => ({
          create: { width: 64, height: 64, channels: 3 as const, background: { r, g: 0, b: 0 } },
        });
        const frames = [await sharp(frame(255)).png().toBuffer(), await sharp(frame(0)).png().toBuffer()];
        return w.photo(
          "anim.gif",
          await sharp(frames, { join: { animated: true } })
            .gif()
            .toBuffer(),
        );
      },
      /^⚠️ `image` \(anim\.gif\) is animated \(2 frames\); send a still image$/,
    ],
    [
      "too small a photo",
      async () =>
        w.photo(
          "tiny.png",
          await sharp({ create: { width: 32, height: 32, channels: 3, background: "#fff" } })
            .png()
            .toBuffer(),
        ),
      /^⚠️ `image` \(tiny\.png\) is 32×32; each side must be at least 64 pixels$/,
    ],
  ];
  for (const [what, make, message] of decoded) {
    it(`${what}: found once downloaded, so said in an ephemeral message`, async () => {
      const channel = w.channel("decoded");
      const jobs = await jobCount();
      const since = Date.now();
      const started = await w.imagic(channel, { image: [await make()] });
      await started.submission.settled;
      expect(await w.ephemeral(w.author, since)).toMatch(message);
      await settle();
      expect(w.fake.posted(channel.id)).toEqual([]);
      expect(await jobCount()).toBe(jobs);
    });
  }

  it("a bad reference of /swap is named by its option", async () => {
    const view = await w.form(w.channel("swap-bad"), "/swap");
    const errors = await inlineErrors(view, {
      source: [w.photo()],
      subject: "cat",
      reference: [
        w.photo("ref1.png"),
        w.photo("ref2.pdf", Buffer.from("%PDF-1.7"), { mimetype: "application/pdf" }),
      ],
    });
    expect(errors).toEqual({
      reference:
        "reference2 (ref2.pdf) is a PDF document; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
    });
  });

  it("a form sent with more files than an input takes (not by Slack's client) is refused under the input, not cut short", async () => {
    const channel = w.channel("too-many");
    const jobs = await jobCount();
    const swap = await w.form(channel, "/swap");
    const references = Array.from({ length: 6 }, (_, i) => w.photo(`ref${i + 1}.png`));
    expect(() =>
      w.fake.submit(swap, w.author, { source: [w.photo()], subject: "cat", reference: references }),
    ).toThrow(/reference takes 5 files at most/);
    expect(await inlineErrors(swap, { source: [w.photo()], subject: "cat", reference: references })).toEqual({
      reference: "reference1…reference5 take at most 5 photos; 6 were sent",
    });
    const imagic = await w.form(channel, "/imagic");
    expect(await inlineErrors(imagic, { image: [w.photo(), w.photo("b.png")], prompt: "a cat" })).toEqual({
      image: "image takes one photo; 2 were sent",
    });
    await settle();
    expect(w.fake.posted(channel.id)).toEqual([]);
    expect(await jobCount()).toBe(jobs);
  });
});

describe("forms submitted with nothing, or with values out of range", () => {
  it("Slack's client will not send a form without its required fields; one that arrives anyway is answered under them", async () => {
    const channel = w.channel("empty");
    const view = await w.form(channel, "/imagic");
    expect(() => w.fake.submit(view, w.author, {})).toThrow(/image is required; prompt is required/);
    expect(await inlineErrors(view, {})).toEqual({ image: "image is required" });
    expect(await inlineErrors(view, { image: [w.photo()], prompt: "   " })).toEqual({
      prompt: "prompt is empty: write a few words",
    });
    expect(w.fake.posted(channel.id)).toEqual([]);
  });

  it("an η out of range and bad seeds are named with their limits under their fields", async () => {
    const view = await w.form(w.channel("opts"), "/imagic");
    expect(await inlineErrors(view, { image: [w.photo()], prompt: "a cat", eta: "3" })).toEqual({
      eta: "eta must be a number from 0 to 1.5 (got 3)",
    });
    expect(
      await inlineErrors(view, { image: [w.photo()], prompt: "a cat", seeds: "1,2,3,4,5,6,7,8,9" }),
    ).toEqual({
      seeds: "seeds lists 9 seeds; the limit is 8",
    });
  });
});

describe("files and channels the bot cannot use", () => {
  it("a photo deleted before the form was sent: said under the field", async () => {
    const view = await w.form(w.channel("deleted"), "/imagic");
    const photo = w.photo();
    w.fake.deleteFile(photo);
    expect(await inlineErrors(view, { image: [photo], prompt: "a cat" })).toEqual({
      image: "image (chelsea.png) was deleted, or I may not see it; upload it again",
    });
  });

  it("a file of Google Drive or another app (a link on Slack, no bytes) is said to be one under its field", async () => {
    const view = await w.form(w.channel("external"), "/imagic");
    const drive = w.fake.externalFile(
      w.author,
      "beach.jpg",
      "image/jpeg",
      "gdrive",
      "https://drive.google.com/file/d/1abc/view",
    );
    expect(await inlineErrors(view, { image: [drive], prompt: "a cat" })).toEqual({
      image:
        "image (beach.jpg) is a link to a file on Google Drive, not a file on Slack; upload the photo itself",
    });
    // A remote file an app added (files.remote.add) has no URL at all.
    const remote = w.fake.externalFile(w.author, "scan.png", "image/png", "app");
    expect(await inlineErrors(view, { image: [remote], prompt: "a cat" })).toEqual({
      image:
        "image (scan.png) is a link to a file on another service, not a file on Slack; upload the photo itself",
    });
  });

  it("Slack failing to describe a photo (internal_error) is said under its field; the form sent again goes through", async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const channel = w.channel("slack-error");
    const view = await w.form(channel, "/imagic");
    w.fake.forcedErrors.set("files.info", "internal_error");
    expect(await inlineErrors(view, { image: [w.photo()], prompt: "a cat" })).toEqual({
      image: "image (chelsea.png): Slack could not describe it (internal_error); try again",
    });
    const again = w.fake.submit(view, w.author, { image: [w.photo()], prompt: "a cat", seeds: "2" });
    await w.offer(channel, await w.thread({ view, submission: again, channel }), 1, 2);
  });

  it("an app installed without files:read says what the admin must add", async () => {
    const view = await w.form(w.channel("no-scope"), "/imagic");
    w.fake.scopes.delete("files:read");
    try {
      expect(await inlineErrors(view, { image: [w.photo()], prompt: "a cat" })).toEqual({
        image:
          "image: this app may not read files (it lacks the files:read scope); a workspace admin must add it and reinstall the app (docs/SLACK.md)",
      });
    } finally {
      w.fake.scopes.add("files:read");
    }
  });

  it("a channel the bot is not in: the user is told privately (in a DM) how to add it, nothing is queued", async () => {
    const channel = w.channel("outside", { bot: false });
    const jobs = await jobCount();
    const since = Date.now();
    await w.imagic(channel);
    const dm = await w.fake.waitFor("a DM to the author", () =>
      [...w.fake.messages.values()].find(
        (m) => m.channel.startsWith("D") && m.history[0] && m.history[0].at >= since,
      ),
    );
    expect(dm.text).toBe(
      "⚠️ I am not a member of this channel: add me (`/invite @` and my name) and try again",
    );
    expect(w.fake.mustChannel(dm.channel).members.has(w.author.id)).toBe(true);
    expect(await jobCount()).toBe(jobs);
  });

  it("a channel where only some members may post (an announcement channel): the user is told why, privately; nothing is queued", async () => {
    const channel = w.channel("announcements", { restricted: true });
    const jobs = await jobCount();
    const since = Date.now();
    await w.imagic(channel);
    expect(await w.ephemeral(w.author, since)).toBe(
      "⚠️ only some members may post in this channel, and I am not one of them: run the command in another channel",
    );
    expect(await jobCount()).toBe(jobs);
  });

  it("'Edit with Imagic' on a message without a photo says so, privately", async () => {
    const channel = w.channel("no-photo");
    const since = Date.now();
    const message = w.fake.post(w.author, channel, "just words");
    w.fake.shortcut(w.author, message, EDIT_SHORTCUT);
    expect(await w.ephemeral(w.author, since)).toMatch(/^⚠️ That message has no photo to edit/);
    expect([...w.fake.views.values()].some((v) => v.view.private_metadata?.includes(message.ts))).toBe(false);
  });
});

describe("jobs that do not end well", () => {
  it("/swap on a worker without the swap pipelines is validated, queued, and ends with the queue's 'not available yet'", async () => {
    const { "imagic.train": train } = lightweightPipelines();
    await w.worker({ "imagic.train": train });
    const started = await w.swap(w.channel("swap"), [w.photo("ref.png")]);
    const thread = await w.thread(started);
    expect(w.fake.posted(started.channel.id).find((m) => m.ts === thread)?.text).toBe(
      `🔁 <@${w.author.id}> asked Photoswap for a “cat” from 1 reference photo(s)`,
    );
    const progress = await w.postedStartingWith(started.channel, thread, "❌");
    expect(progress.text).toBe("❌ swap.concept is not available yet on this engine");
  });

  it("/swap's form takes several strengths as text: bad ones are named under the field, good ones reach the job as a list", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.channel("swap-strength-list");
    const view = await w.form(channel, "/swap", "cat");
    expect(view.view.blocks.find((b) => b.block_id === "strengths")).toMatchObject({
      element: { type: "plain_text_input", max_length: 200 },
    });
    const form = { source: [w.photo()], subject: "cat", reference: [w.photo("ref1.png")] };
    expect(await inlineErrors(view, { ...form, strengths: "10/25" })).toEqual({
      strengths:
        'strengths: "10/25" is not three whole step counts; give φ/M/A step triples separated by commas, e.g. "10/25/20,5/15/10"',
    });
    expect(await inlineErrors(view, { ...form, strengths: "1/1/1,2/2/2,3/3/3", seeds: "6" })).toEqual({
      strengths: "strengths × seeds: 6 seed(s) × 3 strength(s) make 18 variants; the limit is 16",
    });
    expect(await inlineErrors(view, { ...form, strengths: "1/1/1", self_map_steps: "40" })).toEqual({
      strengths:
        "strengths gives every step count itself: leave self_map_steps out, or write it into strengths",
    });
    expect(payloads).toEqual([]);
    const submission = w.fake.submit(view, w.author, { ...form, strengths: "10/25/20, 5/15/10", seeds: "2" });
    const started = { view, submission, channel };
    await w.offer(started.channel, await w.thread(started), 1, 2);
    expect(payloads.map((p) => p.options.strengths)).toEqual([
      [
        { selfOutputSteps: 10, selfMapSteps: 25, crossMapSteps: 20 },
        { selfOutputSteps: 5, selfMapSteps: 15, crossMapSteps: 10 },
      ],
    ]);
  });

  it("/swap's form takes `size` as /imagic's does: bad ones are named with the limit under the field, a good one reaches the job", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.channel("swap-size");
    const refused: Array<[string, string]> = [
      ["big", 'size must be a side ("512") or width×height ("768x512"), got "big"'],
      ["100x900", "size 100×900 has an aspect ratio of 9.00:1; the limit is 4:1"],
      ["32", "size 32×32: each side must be a whole number of pixels from 64 to 2048"],
    ];
    const imagic = await w.form(channel, "/imagic");
    const swap = await w.form(channel, "/swap", "cat");
    expect(swap.view.blocks.find((b) => b.block_id === "size")).toMatchObject({
      optional: true,
      element: { type: "plain_text_input", max_length: 20 },
    });
    const form = { source: [w.photo()], subject: "cat", reference: [w.photo("ref1.png")] };
    for (const [size, message] of refused) {
      expect(await inlineErrors(imagic, { image: [w.photo()], prompt: "a cat", size })).toEqual({
        size: message,
      });
      expect(await inlineErrors(swap, { ...form, size })).toEqual({ size: message });
    }
    expect(payloads).toEqual([]);
    const submission = w.fake.submit(swap, w.author, { ...form, size: "768x512", seeds: "2" });
    await w.offer(channel, await w.thread({ view: swap, submission, channel }), 1, 2);
    expect(payloads.map((p) => [p.options.width, p.options.height])).toEqual([[768, 512]]);
  });

  it("/swap's form carries the references and strengths to the swap job, and a finished swap is offered and picked", async () => {
    const { pipelines, payloads } = recordedSwapPipelines();
    await w.worker(pipelines);
    const channel = w.channel("swap-strengths");
    const view = await w.form(channel, "/swap", "cat");
    const blocks = view.view.blocks.map((b) => b.block_id);
    expect(blocks).toEqual([
      "source",
      "subject",
      "reference",
      "self_output_steps",
      "self_map_steps",
      "cross_map_steps",
      "strengths",
      "seeds",
      "size",
    ]);
    expect(view.view.blocks[2]).toMatchObject({
      label: { text: "reference1 … reference5" },
      element: { max_files: 5 },
    });
    expect(view.view.blocks[1]).toMatchObject({ element: { initial_value: "cat" } });
    const submission = w.fake.submit(view, w.author, {
      source: [w.photo()],
      subject: "cat",
      reference: [w.photo("ref1.png"), w.photo("ref2.png")],
      self_map_steps: "40",
      cross_map_steps: "0",
      seeds: "2",
    });
    const started = { view, submission, channel };
    const thread = await w.thread(started);
    const offer = await w.offer(started.channel, thread, 1, 2);
    expect(payloads.map((p) => ({ options: p.options, references: p.referenceBlobIds.length }))).toEqual([
      {
        options: expect.objectContaining({ selfOutputSteps: 10, selfMapSteps: 40, crossMapSteps: 0 }),
        references: 2,
      },
    ]);
    expect(offer.text).toContain("*Pick the final image*");
    w.fake.react(w.author, offer, "two");
    const final = await w.fake.waitFor("the swap's final image", () =>
      w.posted(started.channel, thread).find((m) => m.text.includes("*Final*")),
    );
    expect(final.text).toContain("“cat”");
    await w.fake.waitFor("its file", () => w.fake.filesOf(final)[0]?.name.startsWith("swap-seed"));
  });

  it("an engine failure shows the engine's message on the progress message", async () => {
    const failing: PipelineRegistry = {
      "imagic.train": async (ctx) => {
        await ctx.progress({ stage: "embedding", step: 1, total: 10 });
        throw new UserFacingError("the photo is too dark to learn from");
      },
    };
    await w.worker(failing);
    const started = await w.imagic(w.channel("fail"));
    const progress = await w.postedStartingWith(started.channel, await w.thread(started), "❌");
    expect(progress.text).toBe("❌ the photo is too dark to learn from");
  });

  it("a progress message deleted mid-job: a new one in the thread carries on, to the job's last word", async () => {
    let deleted = () => {};
    const gone = new Promise<void>((resolve) => {
      deleted = resolve;
    });
    await w.worker({
      "imagic.train": async (ctx) => {
        await ctx.progress({ stage: "embedding", step: 1, total: 10 });
        await gone;
        await ctx.progress({ stage: "embedding", step: 2, total: 10 });
        throw new UserFacingError("the photo is too dark to learn from");
      },
    });
    const started = await w.imagic(w.channel("deleted-progress"));
    const thread = await w.thread(started);
    const first = await w.fake.waitFor("the progress message at step 1", () =>
      w.posted(started.channel, thread).find((m) => m.text.includes("1/10")),
    );
    w.fake.deleteMessage(first);
    deleted();
    const last = await w.postedStartingWith(started.channel, thread, "❌");
    expect(last.ts).not.toBe(first.ts);
    expect(last.text).toBe("❌ the photo is too dark to learn from");
    expect(w.posted(started.channel, thread)).toEqual([last]);
  });

  it("/imagic cancel stops the user's jobs, removing waiting ones; /imagic queue shows them", async () => {
    await w.worker(lightweightPipelines({ steps: 400, stepMs: 25 }));
    const channel = w.channel("cancel");
    const running = await w.imagic(channel);
    const runningThread = await w.thread(running);
    await w.fake.waitFor("progress", () =>
      w.posted(channel, runningThread)[0]?.text.includes("optimizing the text embedding"),
    );
    const waiting = await w.imagic(w.channel("cancel-2"));
    const waitingThread = await w.thread(waiting);
    await w.fake.waitFor("a place in line", () =>
      w.posted(waiting.channel, waitingThread)[0]?.text.includes("next in line"),
    );

    let since = Date.now();
    w.fake.command(w.author, channel, "/imagic", "queue");
    const lines = (await w.ephemeral(w.author, since)).split("\n");
    expect(lines[0]).toMatch(
      /^⏳ Imagic fine-tune: optimizing the text embedding .* \d+\/400 .*\(job [\w-]+\)$/,
    );
    expect(lines[1]).toMatch(/^🕒 Imagic fine-tune: next in line .*\(job [\w-]+\)$/);

    // With no engine to run the waiting one (a worker that stops hands its job back), cancel removes it
    // from the queue and says so on its progress message; the running one stops after its step.
    since = Date.now();
    w.fake.command(w.author, channel, "/imagic", "cancel");
    const said = await w.ephemeral(w.author, since);
    expect(said).toMatch(
      /^• imagic\.train \(job [\w-]+\): stopping after the current step\n• imagic\.train \(job [\w-]+\): cancelled$/,
    );
    expect((await w.postedStartingWith(channel, runningThread, "🛑")).text).toBe("🛑 Cancelled.");
    expect((await w.postedStartingWith(waiting.channel, waitingThread, "🛑")).text).toBe(
      "🛑 Cancelled before it started.",
    );
    expect(w.posted(channel, runningThread).filter((m) => m.reactions.size > 0)).toEqual([]);
  });

  it("a pick whose state expired says so and offers to start again", async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const started = await w.imagic(w.channel("expired"), { seeds: "2" });
    const thread = await w.thread(started);
    const grid = await w.offer(started.channel, thread, 1, 2);
    const train = (await w.queue.queue.getJobs(["completed"])).find(
      (j) => j.name === "imagic.train" && j.data.origin.thread === thread,
    );
    if (!train) throw new Error("no completed imagic.train job");
    // What the blob TTL does, now.
    await w.h.redis.client().del(keys.blob((train.returnvalue as { stateBlobId: string }).stateBlobId));

    const jobs = await jobCount();
    w.fake.react(w.author, grid, "one");
    const expired = await w.postedStartingWith(started.channel, thread, "⌛");
    expect(expired.text).toMatch(
      /the fine-tune of this edit has expired .* Run `\/imagic` again to start again/,
    );
    expect(await jobCount()).toBe(jobs);
  });
});

describe("plain commands", () => {
  it("/imagic help and /imagic queue answer privately, in the slash command's acknowledgement", async () => {
    const channel = w.channel("help");
    let since = Date.now();
    const help = w.fake.command(w.author, channel, "/imagic", "help");
    const text = await w.ephemeral(w.author, since);
    expect(text).toContain("`/imagic a photo of a sitting dog`");
    expect(text).toContain("*Photo edits with Imagic and Photoswap*");
    expect(w.fake.ephemeralsFor(w.author).at(-1)?.via).toBe("ack");
    expect(help.delivery.ackedAt).toBeDefined();
    since = Date.now();
    w.fake.command(w.other, channel, "/imagic", "queue");
    expect(await w.ephemeral(w.other, since)).toBe("You have no edits queued or running.");
    // No form opens for them.
    expect([...w.fake.views.values()].filter((v) => v.trigger === help.trigger)).toEqual([]);
  });

  it("a slash command's text over the prompt's limit prefills the form whole, says so, and is refused by name under it when sent", async () => {
    const typed = `a photo of ${"a very ".repeat(85)}fluffy cat`;
    expect(typed.length).toBe(616);
    const view = await w.form(w.channel("long-prompt"), "/imagic", typed);
    const prompt = view.view.blocks.find((b) => b.block_id === "prompt");
    expect(prompt).toMatchObject({
      element: { initial_value: typed },
      hint: { text: "Your text is 616 characters; the limit is 500: shorten it, then send" },
    });
    expect(await inlineErrors(view, { image: [w.photo()], prompt: typed })).toEqual({
      prompt: "prompt is 616 characters; the limit is 500",
    });
    // Past Slack's own 3,000 characters, only those fit, and the hint says that too.
    const longer = await w.form(w.channel("longer-prompt"), "/imagic", "x".repeat(3500));
    expect(longer.view.blocks.find((b) => b.block_id === "prompt")).toMatchObject({
      element: { initial_value: "x".repeat(3000), max_length: 3000 },
      hint: {
        text: "Your text is 3500 characters (only its first 3000 fit here); the limit is 500: shorten it, then send",
      },
    });
  });

  it("a slash command's text, which Slack sends with &, < and > escaped, prefills the form as it was typed", async () => {
    const typed = "a cat & a dog <3, not &lt;";
    const view = await w.form(w.channel("escaped"), "/imagic", typed);
    expect(view.view.blocks.find((b) => b.block_id === "prompt")).toMatchObject({
      element: { initial_value: typed },
    });
  });
});
