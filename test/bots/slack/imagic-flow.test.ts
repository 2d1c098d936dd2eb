// /imagic end to end in Socket Mode: Bolt and the WebClient against the fake Slack, the real queue and
// engine worker (with the queue tests' lightweight pipelines: real blobs and grids, milliseconds per step).
import sharp from "sharp";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EDIT_SHORTCUT } from "../../../src/bots/slack/bot.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world({ positionRefreshMs: 200 });
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
});

const png = async (bytes: Uint8Array) => sharp(bytes).metadata();

describe("/imagic", () => {
  it("opens a form, answers within 3 s, works in a thread: progress → grid → pick seed → η sweep → pick → final", async () => {
    await w.worker(lightweightPipelines({ steps: 6, stepMs: 150 }), { previewIntervalMs: 200 });
    const channel = w.channel("edits");

    // The slash command is acknowledged at once and opens the form, prompt prefilled from its text.
    const { trigger, delivery } = w.fake.command(w.author, channel, "/imagic", "a photo of a sleeping cat");
    const view = await w.fake.viewFor(trigger);
    await delivery.settled;
    expect((delivery.ackedAt ?? Infinity) - delivery.sentAt).toBeLessThan(3000);
    expect(view.view.title.text).toBe("Imagic photo edit");
    const blocks = Object.fromEntries(view.view.blocks.map((b) => [b.block_id, b]));
    expect(Object.keys(blocks)).toEqual(["image", "prompt", "preset", "eta", "seeds", "size"]);
    expect(blocks.image).toMatchObject({ optional: false, element: { type: "file_input", max_files: 1 } });
    expect(blocks.prompt).toMatchObject({
      optional: false,
      element: { type: "plain_text_input", initial_value: "a photo of a sleeping cat", max_length: 500 },
    });
    expect(blocks.preset).toMatchObject({ optional: true, element: { type: "static_select" } });
    expect(blocks.eta).toMatchObject({ element: { type: "number_input", min_value: "0", max_value: "1.5" } });

    // Submitted: closed within 3 s, a public answer naming the author, its thread holds the work.
    const submission = w.fake.submit(view, w.author, {
      image: [w.photo()],
      prompt: "a photo of a sleeping cat",
      seeds: "11,22,33",
    });
    await submission.settled;
    expect((submission.ackedAt ?? Infinity) - submission.sentAt).toBeLessThan(3000);
    expect(submission.response).not.toHaveProperty("response_action"); // no errors: the form closes
    await w.fake.waitFor("the form to close", () => !view.open);
    const started = { view, submission, channel };
    const thread = await w.thread(started);
    const answer = w.fake.posted(channel.id).find((m) => m.ts === thread);
    expect(answer?.text).toBe(`🎨 <@${w.author.id}> asked Imagic for “a photo of a sleeping cat”`);

    // One progress message in the thread, edited through the stages, then marked done. Each stage shows
    // at least once, however short against the edit interval: its last word waits for them.
    const seedGrid = await w.offer(channel, thread, 1, 3);
    const progress = w.posted(channel, thread)[0];
    if (!progress) throw new Error("no progress message");
    await w.fake.waitFor("the progress message's last word", () => progress.text.startsWith("✅"));
    const states = progress.history.map((h) => h.text);
    expect(states.some((s) => /optimizing the text embedding · `[█░]+` \d\/6/.test(s))).toBe(true);
    expect(states.some((s) => /fine-tuning the model .* loss /.test(s))).toBe(true);
    expect(progress.history.some((h) => h.files.includes("preview.png"))).toBe(true);
    expect(progress.text).toBe("✅ Fine-tuned on your photo.");
    expect(progress.files).toEqual([]);
    // Replaced previews are deleted (files.delete, after the edit that replaced them), not left in the
    // workspace's files.
    const previews = [...w.fake.files.values()].filter((f) => f.name === "preview.png");
    expect(previews.length).toBeGreaterThan(0);
    await w.fake.waitFor("the replaced previews' deletion", () => previews.every((f) => f.deleted));

    // The seed grid: an image, the seeds named in order (Slack's bold), one number reaction per seed.
    expect(seedGrid.text).toContain("*Pick a seed*");
    expect(seedGrid.text).toContain("1️⃣ seed 11 · 2️⃣ seed 22 · 3️⃣ seed 33");
    const [gridFile] = w.fake.filesOf(seedGrid);
    expect(gridFile?.name).toBe("grid.png");
    expect((await png(gridFile?.bytes ?? new Uint8Array())).width).toBe(96);
    expect([...seedGrid.reactions.keys()]).toEqual(["one", "two", "three"]);

    // Someone else's reaction picks nothing; the author's picks seed 22 and brings its η sweep.
    await w.fake.react(w.other, seedGrid, "two").settled;
    await new Promise((r) => setTimeout(r, 300));
    expect(w.posted(channel, thread)).toHaveLength(2);
    const pick = w.fake.react(w.author, seedGrid, "two");
    const sweep = await w.offer(channel, thread, 2, 5);
    expect(sweep.text).toContain("*Pick the final image*");
    expect(sweep.text).toContain(
      "1️⃣ η 0.6, seed 22 · 2️⃣ η 0.8, seed 22 · 3️⃣ η 1, seed 22 · 4️⃣ η 1.2, seed 22 · 5️⃣ η 1.4, seed 22",
    );
    expect([...sweep.reactions.keys()]).toEqual(["one", "two", "three", "four", "five"]);

    // Slack retries the pick's event (same event_id): nothing is queued twice.
    await w.fake.redeliver(pick).settled;
    await new Promise((r) => setTimeout(r, 300));
    expect(
      (await w.queue.queue.getJobs(["completed", "active", "waiting"])).filter(
        (j) => j.name === "imagic.render",
      ),
    ).toHaveLength(1);

    // The pick of η posts the full-resolution image, the very bytes the engine stored.
    w.fake.react(w.author, sweep, "three");
    const final = await w.fake.waitFor("the final image", () =>
      w.posted(channel, thread).find((m) => m.text.includes("*Final*")),
    );
    expect(final.text).toContain("seed 22, η 1");
    await w.fake.waitFor("the final's file", () => w.fake.filesOf(final).length > 0);
    const [finalFile] = w.fake.filesOf(final);
    expect(finalFile?.name).toBe("imagic-seed22-eta1.png");
    const render = (await w.queue.queue.getJobs(["completed"])).find((j) => j.name === "imagic.render");
    if (!render) throw new Error("no completed imagic.render job");
    const chosen = (render.returnvalue as { images: { eta: number; blobId: string }[] }).images.find(
      (i) => i.eta === 1,
    );
    expect(Buffer.from(finalFile?.bytes ?? [])).toEqual(await w.h.blobs.get(chosen?.blobId ?? ""));

    // The picks were acknowledged in time. Nothing the bot asked of Slack was refused, except that this
    // test posts faster than Slack's message a second per channel: the WebClient waited out each 429
    // (Retry-After) and sent the same call again.
    expect((pick.ackedAt ?? Infinity) - pick.sentAt).toBeLessThan(3000);
    const refused = w.fake.calls.filter((c) => c.status !== 200 || c.error);
    for (const call of refused) {
      expect(call.status).toBe(429);
      const again = w.fake.calls.find(
        (c) =>
          c.at >= call.at + 1000 &&
          c.method === call.method &&
          JSON.stringify(c.args) === JSON.stringify(call.args),
      );
      expect(again).toMatchObject({ status: 200 });
      expect(again?.error).toBeUndefined();
    }
  });

  it("'Edit with Imagic' on a photo message opens the form with that photo and works in the photo's thread", async () => {
    await w.worker(lightweightPipelines({ steps: 2, stepMs: 10 }));
    const channel = w.channel("photos");
    const message = w.fake.post(w.author, channel, "look at this cat", [w.photo("cat & co <draft>.png")]);
    const { trigger } = w.fake.shortcut(w.author, message, EDIT_SHORTCUT);
    const view = await w.fake.viewFor(trigger);
    // The photo is the message's: shown by name, not asked for.
    expect(view.view.blocks.map((b) => `${b.type}:${b.block_id}`)).toEqual([
      "context:image",
      "input:prompt",
      "input:preset",
      "input:eta",
      "input:seeds",
      "input:size",
    ]);
    // The file name as written: &, < and > escaped in the mrkdwn that shows it.
    expect(view.view.blocks[0]).toMatchObject({
      elements: [{ type: "mrkdwn", text: "*image*: cat &amp; co &lt;draft&gt;.png (from the message)" }],
    });
    w.fake.submit(view, w.author, { prompt: "a photo of a cat in a hat", seeds: "2" });

    // The answer and everything after it go to the photo's thread.
    const answer = await w.fake.waitFor(
      "the answer in the photo's thread",
      () => w.posted(channel, message.ts)[0],
    );
    expect(answer.text).toContain("a photo of a cat in a hat");
    const grid = await w.offer(channel, message.ts, 1, 2);
    expect(grid.text).toContain("*Pick a seed*");
    const job = (await w.queue.queue.getJobs(["completed"])).find(
      (j) => j.data.prompt === "a photo of a cat in a hat",
    );
    // The job's photo is the message's, pixel for pixel (the intake stores its own PNG of it).
    const pixels = async (bytes: Uint8Array | undefined) => sharp(bytes).raw().toBuffer();
    const stored = await pixels(await w.h.blobs.get(job?.data.imageBlobId));
    const sent = await pixels(w.fake.files.get(message.files[0] ?? "")?.bytes);
    expect(stored.equals(sent)).toBe(true);
  });

  it("a prompt that writes mentions is shown in the answer and the grid, but mentions only the author", async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const channel = w.channel("mentions");
    const prompt = `<@${w.other.id}> <!channel> <!here> @everyone as a cat`;
    const thread = await w.thread(await w.imagic(channel, { prompt, seeds: "1" }));
    const grid = await w.offer(channel, thread, 1, 1);
    const answer = w.fake.posted(channel.id).find((m) => m.ts === thread);
    for (const message of [answer, grid]) {
      expect(message?.text).toContain(w.other.id); // shown, as written
      // Slack notifies whoever a "<@U…>" or "<!…>" in a message's text names (it has no allowed_mentions).
      expect([...(message?.text ?? "").matchAll(/<[@!]([^>|]+)/g)].map((m) => m[1])).toEqual([w.author.id]);
    }
  });

  it("shows a waiting job's place in line and keeps it current until the job starts", async () => {
    const a = await w.imagic(w.channel("first"));
    const threadA = await w.thread(a);
    const b = await w.imagic(w.channel("second"));
    const threadB = await w.thread(b);
    const waitingB = await w.postedStartingWith(
      b.channel,
      threadB,
      "🕒 Imagic fine-tune: queued, position 2",
    );
    expect(w.posted(a.channel, threadA)[0]?.text).toMatch(/^🕒 Imagic fine-tune: next in line/);

    await w.worker(lightweightPipelines({ steps: 20, stepMs: 100 }));
    await w.fake.waitFor("B moves up", () => waitingB.text.startsWith("🕒 Imagic fine-tune: next in line"));
    await w.fake.waitFor("A runs", () => w.posted(a.channel, threadA)[0]?.text.startsWith("⏳"));
  });
});
