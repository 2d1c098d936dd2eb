// Where a command runs and what Discord then allows: permissions per place (channel, thread, forum
// post, announcement channel), thread creation that Discord refuses, thread names, and mentions a
// user writes into a prompt. End to end through discord.js, the fake Discord, the queue and a worker.
import { ChannelType, PermissionFlagsBits } from "discord.js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { rendered } from "../../../src/bots/discord/fake/mentions.js";
import { ALL_BOT_PERMISSIONS } from "../../../src/bots/discord/fake/server.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, PHOTO, type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world();
  await w.startBot();
});
afterAll(() => w.close());
beforeEach(async () => {
  await w.h.stopWorkers();
  await w.worker(lightweightPipelines({ steps: 2, stepMs: 5 }));
});

describe("permissions per place", () => {
  it("runs in a forum post where the bot may send in threads but not in channels", async () => {
    // Send Messages has no effect inside a thread, and a forum post is one: Send Messages in Threads counts.
    const forum = w.fake.addForumChannel("art", ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.SendMessages);
    const post = w.fake.addThread(forum, "my cat", w.author);
    const interaction = w.imagic(post, [opt.string("seeds", "2")]);
    const grid = await w.offer(post.id, 1, 2);
    expect(grid.content).toContain("**Pick a seed**");
    // The answer and everything after it stay in the post: no thread of a thread.
    expect(w.fake.mustMessage(interaction.originalId ?? "").channelId).toBe(post.id);
    await w.fake.waitFor("the progress message's last word", () =>
      w.posted(post.id)[1]?.content.startsWith("✅"),
    );
    expect(w.posted(post.id).map((m) => [...m.content][0])).toEqual(["🎨", "✅", "<"]);
    expect(w.fake.refused(50013)).toEqual([]);
  });

  it("refuses, naming the permission, in a thread where it may not send (before posting anything)", async () => {
    const channel = w.fake.addTextChannel(
      "no-thread-posts",
      ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.SendMessagesInThreads,
    );
    const thread = w.fake.addThread(channel, "talk", w.author);
    const interaction = w.imagic(thread);
    expect(await w.ephemeral(interaction)).toBe(
      [
        "⚠️ I am missing the Send Messages in Threads permission in this thread: ask a server admin to grant them (see /help), then run /imagic again.",
        "Your command, to copy: `/imagic prompt:a photo of a sleeping cat`",
        "Attach again: `image` `chelsea.png`",
      ].join("\n"),
    );
    expect(w.posted(thread.id).filter((m) => (m.flags & 64) === 0)).toEqual([]);
    expect(w.fake.refused(50013)).toEqual([]);
  });

  it("names the missing permission within Discord's 2,000 characters however long the command was", async () => {
    const channel = w.fake.addTextChannel("no-files", ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.AttachFiles);
    // Long file names, strengths and seeds: the command to copy would not fit beside the reason.
    const photo = (i: number) =>
      w.fake.attachment(`${`photo-${i}-`.padEnd(240, "x")}.png`, PHOTO, "image/png");
    const source = photo(0);
    const references = [1, 2, 3, 4, 5].map(photo);
    const interaction = w.swap(
      channel,
      references,
      [
        opt.string("strengths", Array.from({ length: 20 }, () => "10/25/20").join(",")),
        opt.string("seeds", Array.from({ length: 10 }, (_, i) => 1_000_000_000 + i).join(",")),
      ],
      source,
    );
    const answer = await w.ephemeral(interaction);
    expect(answer).toMatch(/^⚠️ I am missing the Attach Files permission in this channel/);
    expect(answer.length).toBeLessThanOrEqual(2000);
    expect(w.fake.refused(50035)).toEqual([]);
  });

  it("refuses, saying so, in a server that added the commands without the bot (before storing or queueing)", async () => {
    // app_permissions there are @everyone's and Attach Files: they let everything through, yet every
    // channel route of that server answers Missing Access (50001) to the bot.
    const guild = w.fake.addGuild("commands only", { botMember: false });
    const channel = w.fake.addTextChannel("general", ALL_BOT_PERMISSIONS, guild.id);
    const image = w.photo();
    const interaction = w.imagic(channel, [], image);
    expect(await w.ephemeral(interaction)).toBe(
      [
        "⚠️ I am not a member of this server (it added my commands only), so I cannot post my work here: ask a server admin to add me with my invite link, then run /imagic again.",
        "Your command, to copy: `/imagic prompt:a photo of a sleeping cat`",
        "Attach again: `image` `chelsea.png`",
      ].join("\n"),
    );
    expect(await w.queue.listForUser(w.author.id)).toEqual([]);
    // Nothing downloaded, and nothing asked of the server's channels that Discord refuses.
    expect(w.fake.requests.filter((r) => r.path.includes(image.id) || r.path.includes(channel.id))).toEqual(
      [],
    );
  });

  it("opens an announcement thread in an announcement channel", async () => {
    const news = w.fake.addAnnouncementChannel("news");
    const thread = await w.thread(w.imagic(news, [opt.string("seeds", "2")]));
    expect(w.fake.mustChannel(thread).type).toBe(ChannelType.AnnouncementThread);
    await w.offer(thread, 1, 2);
  });
});

describe("threads Discord will not open", () => {
  it.each([
    [160005, "Discord says threads are locked here"],
    [160006, "this server has as many active threads as Discord allows"],
    [160007, "this server has as many active announcement threads as Discord allows"],
    [50001, "Discord does not let me open threads in this channel (Missing Access)"],
  ])("falls back to the channel on %i, saying why", async (code, why) => {
    const channel = w.fake.addTextChannel(`refuses-${code}`);
    channel.refuseThreadsWith = code;
    const interaction = w.imagic(channel, [opt.string("seeds", "2")]);
    const grid = await w.offer(channel.id, 1, 2);
    const [answer, note] = w.posted(channel.id);
    expect(answer?.id).toBe(interaction.originalId);
    expect(note?.content).toBe(`ℹ️ ${why}, so I answer here instead of in a thread.`);
    expect(grid.content).toContain("**Pick a seed**");
  });

  it("edits the public answer to say the edit did not start when something fails after it", async () => {
    const channel = w.fake.addTextChannel("vanishing");
    // Unknown Channel: deleted between the answer and the thread. Not a reason to fall back: a failure.
    channel.refuseThreadsWith = 10003;
    const interaction = w.imagic(channel);
    expect(await w.ephemeral(interaction)).toMatch(/^⚠️ Something went wrong on my side/);
    const answer = w.fake.mustMessage(interaction.originalId ?? "");
    await w.fake.waitFor("the answer to say so", () => answer.content.includes("❌"));
    expect(answer.content).toMatch(
      /asked Imagic for “a photo of a sleeping cat”\n❌ Not started: something went wrong on my side/,
    );
    expect(await w.queue.queue.getJobCountByTypes("waiting", "active")).toBe(0);
  });

  it("cuts a long thread name between characters, never inside an emoji", async () => {
    const channel = w.fake.addTextChannel("long-names");
    // "Imagic: " + 90 letters puts the cat emoji (two UTF-16 units) across the 99th unit.
    const prompt = `${"a".repeat(90)}🐈‍⬛ on a windowsill in the evening sun`;
    const photo = w.photo();
    const interaction = w.fake.runCommand({
      name: "imagic",
      user: w.author,
      channel,
      options: [opt.attachment("image", photo), opt.string("prompt", prompt)],
      attachments: [photo],
    });
    const thread = w.fake.mustChannel(await w.thread(interaction));
    expect(thread.name).toBe(`Imagic: ${"a".repeat(90)}…`);
  });
});

describe("mentions in what users write", () => {
  it("pings nobody through a prompt, and only the author when a result is ready", async () => {
    const everyonePing = ALL_BOT_PERMISSIONS | PermissionFlagsBits.MentionEveryone;
    const channel = w.fake.addTextChannel("pings", everyonePing);
    const role = w.fake.addRole("artists", { mentionable: true });
    const prompt = `@everyone <@&${role.id}> <@${w.other.id}> a photo of a cat`;
    const photo = w.photo();
    const interaction = w.fake.runCommand({
      name: "imagic",
      user: w.author,
      channel,
      options: [opt.attachment("image", photo), opt.string("prompt", prompt), opt.string("seeds", "2")],
      attachments: [photo],
    });
    const thread = await w.thread(interaction);
    const grid = await w.offer(thread, 1, 2);
    const answer = w.fake.mustMessage(interaction.originalId ?? "");
    // The prompt is shown as written…
    expect(answer.content).toContain(prompt);
    expect(w.fake.mustChannel(thread).name).toContain("@everyone");
    // …but pings no one; the grid pings its author and no one else.
    expect(answer.pinged).toEqual({ users: [], roles: [], everyone: false });
    for (const message of w.posted(thread).filter((m) => m.id !== grid.id)) {
      expect(message.pinged).toEqual({ users: [], roles: [], everyone: false });
    }
    expect(grid.pinged).toEqual({ users: [w.author.id], roles: [], everyone: false });
  });
});

describe("markup in what users write", () => {
  it("shows a prompt as written: no masked link, spoiler or bold of the user's in the bot's messages", async () => {
    const prompt = "a [free nitro](https://evil.example) **big** cat||s|| in_a_hat \\o/";
    const photo = w.photo();
    const interaction = w.fake.runCommand({
      name: "imagic",
      user: w.author,
      channel: w.fake.addTextChannel("markup"),
      options: [opt.attachment("image", photo), opt.string("prompt", prompt), opt.string("seeds", "2")],
      attachments: [photo],
    });
    const thread = await w.thread(interaction);
    const grid = await w.offer(thread, 1, 2);
    for (const message of [w.fake.mustMessage(interaction.originalId ?? ""), grid]) {
      const seen = rendered(message.content);
      expect(seen.text).toContain(`“${prompt}”`);
      expect(seen.maskedLinks).toEqual([]);
    }
  });
});
