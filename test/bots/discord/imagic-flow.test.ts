// /imagic end to end: discord.js against the fake Discord, the real queue and engine worker (with the
// queue tests' lightweight pipelines: real blobs and grids, milliseconds per step).
import sharp from "sharp";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

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
  it("answers within 3 s, opens a thread, shows progress, and goes grid → pick seed → η sweep → pick → final", async () => {
    await w.worker(lightweightPipelines({ steps: 6, stepMs: 150 }), { previewIntervalMs: 200 });
    const channel = w.fake.addTextChannel("edits");
    const interaction = w.imagic(channel, [opt.string("seeds", "11,22,33")]);

    const thread = await w.thread(interaction);
    expect(interaction.acknowledgedAt).toBeDefined();
    expect((interaction.acknowledgedAt ?? Infinity) - interaction.dispatchedAt).toBeLessThan(3000);
    expect(interaction.callbackType).toBe(5); // deferred, public
    const answer = w.fake.mustMessage(interaction.originalId ?? "");
    expect(answer.content).toContain(`<@${w.author.id}>`);
    expect(answer.content).toContain("a photo of a sleeping cat");
    expect(answer.flags & 64).toBe(0);
    expect(w.fake.mustChannel(thread).name).toBe("Imagic: a photo of a sleeping cat");

    // One progress message in the thread, edited through the stages, then marked done.
    const seedGrid = await w.offer(thread, 1, 3);
    const progress = w.posted(thread)[0];
    if (!progress) throw new Error("no progress message");
    // Each stage shows at least once, however short against the edit interval: the last word waits for them.
    await w.fake.waitFor("the progress message's last word", () => progress.content.startsWith("✅"));
    const states = progress.history.map((h) => h.content);
    expect(states.some((s) => /optimizing the text embedding · `[█░]+` \d\/6/.test(s))).toBe(true);
    expect(states.some((s) => /fine-tuning the model .* loss /.test(s))).toBe(true);
    expect(states.some((s) => /about \d+ s left/.test(s))).toBe(true);
    expect(progress.history.some((h) => h.attachments.includes("preview.png"))).toBe(true);
    expect(progress.content).toBe("✅ Fine-tuned on your photo.");
    expect(progress.attachments).toHaveLength(0);

    // The seed grid: an image, the seeds named in order, one number reaction per seed.
    expect(seedGrid.content).toContain("**Pick a seed**");
    expect(seedGrid.content).toContain("1️⃣ seed 11 · 2️⃣ seed 22 · 3️⃣ seed 33");
    expect(seedGrid.attachments.map((a) => a.filename)).toEqual(["grid.png"]);
    expect((await png(seedGrid.attachments[0]?.bytes ?? new Uint8Array())).width).toBe(96);
    expect([...seedGrid.reactions.keys()]).toEqual(["1️⃣", "2️⃣", "3️⃣"]);

    // Someone else's reaction picks nothing; the author's picks seed 22 and brings its η sweep.
    w.fake.react(w.other, seedGrid.id, "2️⃣");
    await new Promise((r) => setTimeout(r, 400));
    expect(w.posted(thread)).toHaveLength(2);
    w.fake.react(w.author, seedGrid.id, "2️⃣");
    const sweep = await w.offer(thread, 2, 5);
    expect(sweep.content).toContain("**Pick the final image**");
    expect(sweep.content).toContain(
      "1️⃣ η 0.6, seed 22 · 2️⃣ η 0.8, seed 22 · 3️⃣ η 1, seed 22 · 4️⃣ η 1.2, seed 22 · 5️⃣ η 1.4, seed 22",
    );
    expect([...sweep.reactions.keys()]).toEqual(["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣"]);
    expect((await png(sweep.attachments[0]?.bytes ?? new Uint8Array())).width).toBe(5 * 32);

    // The pick of η posts the full-resolution image, the very bytes the engine stored.
    w.fake.react(w.author, sweep.id, "3️⃣");
    const final = await w.fake.waitFor("the final image", () =>
      w.posted(thread).find((m) => m.content.includes("**Final**")),
    );
    expect(final.content).toContain("seed 22, η 1");
    expect(final.attachments.map((a) => a.filename)).toEqual(["imagic-seed22-eta1.png"]);
    const stored = await w.queue.queue.getJobs(["completed"]);
    const render = stored.find((j) => j.name === "imagic.render");
    if (!render) throw new Error("no completed imagic.render job");
    const chosen = (render.returnvalue as { images: { eta: number; blobId: string }[] }).images.find(
      (i) => i.eta === 1,
    );
    expect(Buffer.from(final.attachments[0]?.bytes ?? [])).toEqual(await w.h.blobs.get(chosen?.blobId ?? ""));

    // A second reaction with the same number does not post the final image again.
    w.fake.react(w.author, sweep.id, "3️⃣");
    await new Promise((r) => setTimeout(r, 300));
    expect(w.posted(thread).filter((m) => m.content.includes("**Final**"))).toHaveLength(1);

    // Nothing the bot did was refused. The one exception is a reaction's 429: discord.js learns a
    // route's bucket from the first response and meets the new bucket's limit once, as on Discord, then
    // waits Retry-After (every reaction is there, above). Progress edits and posts never hit a limit.
    const refused = w.fake.requests.filter((r) => r.status >= 400);
    expect(refused.filter((r) => !(r.status === 429 && r.route.includes("/reactions/")))).toEqual([]);
  });

  it('picks by keycap only: a custom emoji named like a number (Slack\'s "two") or another emoji picks nothing', async () => {
    await w.worker(lightweightPipelines({ steps: 1, stepMs: 1 }));
    const thread = await w.thread(
      w.imagic(w.fake.addTextChannel("custom-emoji"), [opt.string("seeds", "2")]),
    );
    const grid = await w.offer(thread, 1, 2);
    // (The fake sends every reaction as a name; a server's custom emoji has just a name, too.)
    for (const emoji of ["two", ":two:", "one", "👍", "3️⃣"]) w.fake.react(w.author, grid.id, emoji);
    await new Promise((r) => setTimeout(r, 400));
    expect(w.posted(thread)).toHaveLength(2);
    w.fake.react(w.author, grid.id, "2\u20e3");
    expect((await w.offer(thread, 2, 5)).content).toContain("**Pick the final image**");
  });

  it("shows a waiting job's place in line and keeps it current until the job starts", async () => {
    const first = w.fake.addTextChannel("first");
    const second = w.fake.addTextChannel("second");
    const threadA = await w.thread(w.imagic(first));
    const photo = w.photo();
    const interaction = w.fake.runCommand({
      name: "imagic",
      user: w.other,
      channel: second,
      options: [opt.attachment("image", photo), opt.string("prompt", "a photo of a dog")],
      attachments: [photo],
    });
    const threadB = await w.thread(interaction);
    const waitingB = await w.postedStartingWith(threadB, "🕒 Imagic fine-tune: queued, position 2");
    expect(w.posted(threadA)[0]?.content).toMatch(/^🕒 Imagic fine-tune: next in line/);

    await w.worker(lightweightPipelines({ steps: 20, stepMs: 100 }));
    await w.fake.waitFor("B moves up", () =>
      waitingB.content.startsWith("🕒 Imagic fine-tune: next in line"),
    );
    await w.fake.waitFor("A runs", () => w.posted(threadA)[0]?.content.startsWith("⏳"));
  });
});
