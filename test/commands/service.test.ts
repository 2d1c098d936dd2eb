// ChatCommands against the real queue and worker through the in-memory adapter: the flows need
// nothing from Discord.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type CommandRequest, PlatformUnavailableError } from "../../src/commands/chat.js";
import { ChatCommands } from "../../src/commands/service.js";
import { UserFacingError } from "../../src/errors.js";
import type { QueueClient } from "../../src/queue/client.js";
import { lightweightPipelines } from "../queue/support/pipelines.js";
import { type Harness, harness, PHOTO } from "../queue/support/setup.js";
import { MemoryAdapter, pngAttachment } from "./memory-adapter.js";

let h: Harness;
let queue: QueueClient;
let adapter: MemoryAdapter;
let commands: ChatCommands;
const channel = { channel: "console" };
/** The prompt whose imagic.train job fails. */
const FAILING = "a prompt the engine fails on";
/** The options of every imagic.train job the worker ran, in order. */
const trainOptions: unknown[] = [];

beforeAll(async () => {
  h = await harness();
  queue = await h.client({
    consumer: "console",
    platform: "console",
    // Short, for the results put off while the platform is down.
    deliveryLeaseMs: 1_000,
    deliveryRetry: { firstDelayMs: 50, maxDelayMs: 200, tries: 10 },
  });
  adapter = new MemoryAdapter();
  adapter.files.set("memory://photo", PHOTO);
  commands = new ChatCommands({ adapter, queue, blobs: h.blobs, redis: h.redis.client() });
  await commands.start();
  const pipelines = lightweightPipelines({ steps: 2, stepMs: 5 });
  const train = pipelines["imagic.train"];
  await h.worker({
    pipelines: {
      ...pipelines,
      "imagic.train": async (ctx) => {
        trainOptions.push(ctx.payload.options);
        if (ctx.payload.prompt === FAILING) throw new Error("the engine broke");
        if (!train) throw new Error("no imagic.train pipeline");
        return train(ctx);
      },
    },
  });
});
afterAll(async () => {
  await commands.stop();
  await h.close();
});

const imagic = (extra: CommandRequest["options"] = {}, contentType = "image/png"): CommandRequest => ({
  command: "imagic",
  userId: "ann",
  conversation: channel,
  options: { prompt: "a photo of a cat", seeds: "5,6", ...extra },
  attachments: [{ ...pngAttachment("image", "photo.png"), contentType }],
});

async function until<T>(what: string, probe: () => T | undefined): Promise<T> {
  for (let i = 0; i < 500; i++) {
    const value = probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("ChatCommands with a console adapter", () => {
  it("runs the Imagic flow: thread, grid, author's pick, sweep, final", async () => {
    await commands.handleCommand(imagic(), adapter.reply(channel));
    // An offer is complete once its reactions are up (its pick record is saved before them).
    const offer = (what: string) =>
      until(what, () => adapter.messages.find((m) => m.text.includes(what) && m.reactions.length > 0));
    const grid = await offer("Pick a seed");
    expect(grid.ref.conversation.thread).toBeDefined();
    expect(grid.reactions).toEqual(["1️⃣", "2️⃣"]);
    expect(grid.images?.[0]?.name).toBe("grid.png");

    await commands.handleReaction({ userId: "bob", emoji: "1️⃣", message: grid.ref });
    await commands.handleReaction({ userId: "ann", emoji: "2️⃣", message: grid.ref });
    const sweep = await offer("Pick the final image");
    expect(sweep.text).toContain("η 0.6, seed 6");

    await commands.handleReaction({ userId: "ann", emoji: "5️⃣", message: sweep.ref });
    const final = await until("the final", () => adapter.messages.find((m) => m.text.includes("**Final**")));
    expect(final.text).toBe("🖼️ @ann **Final** for “a photo of a cat” — seed 6, η 1.4, full resolution.");
    expect(final.images?.[0]?.name).toBe("imagic-seed6-eta1.4.png");
    // Only one sweep: bob's reaction did nothing.
    expect(adapter.messages.filter((m) => m.text.includes("Pick the final image"))).toHaveLength(1);
  });

  it("a sweep the queue refuses says why and leaves the pick open: reacting again renders it", async () => {
    const before = adapter.messages.length;
    const since = () => adapter.messages.slice(before);
    await commands.handleCommand(imagic(), adapter.reply(channel));
    const offer = (what: string) =>
      until(what, () => since().find((m) => m.text.includes(what) && m.reactions.length > 0));
    const grid = await offer("Pick a seed");

    const cap = "you already have 3 jobs in the queue, the limit is 3; wait for one to finish";
    const enqueue = vi.spyOn(queue, "enqueue").mockRejectedValueOnce(new UserFacingError(cap));
    await commands.handleReaction({ userId: "ann", emoji: "1️⃣", message: grid.ref });
    const refused = await until("the refusal", () => since().find((m) => m.text.includes("❌ Not started")));
    expect(refused.text).toContain(
      `❌ Not started: ${cap} Remove your reaction and react again to try once more.`,
    );
    enqueue.mockRestore();

    await commands.handleReaction({ userId: "ann", emoji: "1️⃣", message: grid.ref });
    const sweep = await offer("Pick the final image");
    expect(sweep.text).toContain("seed 5");
    expect(since().filter((m) => m.text.includes("Pick the final image"))).toHaveLength(1);
  });

  it("says a job's failure once the platform is back from an outage that refused it", async () => {
    // The engine's words for a pipeline's bug.
    const FAILED = "❌ the engine hit an unexpected error";
    const edit = adapter.editMessage.bind(adapter);
    let tries = 0;
    const down = vi.spyOn(adapter, "editMessage").mockImplementation(async (ref, message) => {
      if (!message.text.startsWith(FAILED)) return edit(ref, message);
      tries += 1;
      if (tries <= 2) throw new PlatformUnavailableError("the platform is down");
      return edit(ref, message);
    });
    await commands.handleCommand(imagic({ prompt: FAILING }), adapter.reply(channel));
    const failed = await until("the failure", () => adapter.messages.find((m) => m.text.startsWith(FAILED)));
    down.mockRestore();
    expect(failed.text).toContain("the operators can look it up");
    expect(tries).toBe(3);
  });

  it("answers bad input privately and posts nothing", async () => {
    const before = adapter.messages.length;
    await commands.handleCommand(imagic({}, "video/mp4"), adapter.reply(channel));
    await commands.handleCommand({ ...imagic(), command: "dance" }, adapter.reply(channel));
    await commands.handleCommand(imagic({ size: "100x900" }), adapter.reply(channel));
    // A refused /imagic is followed by what it was sent with, to send it again without retyping it.
    const attach = "Attach again: `image` `photo.png`";
    expect(adapter.privateReplies.slice(-3)).toEqual([
      [
        "⚠️ `image` (photo.png) is an MP4 video; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
        "Your command, to copy: `/imagic prompt:a photo of a cat seeds:5,6`",
        attach,
      ].join("\n"),
      "I do not know `/dance`; try `/help`",
      [
        "⚠️ `size` 100×900 has an aspect ratio of 9.00:1; the limit is 4:1",
        "Your command, to copy: `/imagic prompt:a photo of a cat seeds:5,6 size:100x900`",
        attach,
      ].join("\n"),
    ]);
    expect(adapter.messages).toHaveLength(before);
  });

  it("checks every photo of /swap before storing any: each bad one named on its own line, nothing kept", async () => {
    adapter.files.set("memory://notes", new TextEncoder().encode("not a photo at all"));
    adapter.files.set("memory://cut", PHOTO.subarray(0, PHOTO.byteLength >> 1));
    const before = adapter.messages.length;
    await commands.handleCommand(
      {
        command: "swap",
        userId: "swapper",
        conversation: channel,
        options: { subject: "dog" },
        attachments: [
          pngAttachment("source", "cat.png", "memory://photo"),
          pngAttachment("reference1", "dog1.png", "memory://photo"),
          pngAttachment("reference2", "dog2.png", "memory://notes"),
          pngAttachment("reference3", "dog3.png", "memory://cut"),
        ],
      },
      adapter.reply(channel),
    );
    expect(adapter.privateReplies.at(-1)).toBe(
      [
        "⚠️ `reference2` (dog2.png) is a text file; send a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF image",
        "`reference3` (dog3.png) is incomplete: the file ends before the picture does (the upload was probably cut short); send it again",
        "Your command, to copy: `/swap subject:dog`",
        "Attach again: `source` `cat.png`, `reference1` `dog1.png`, `reference2` `dog2.png`, `reference3` `dog3.png`",
      ].join("\n"),
    );
    // Nothing about the swap was posted (the earlier tests' jobs may still be posting in their threads).
    expect(adapter.messages.slice(before).filter((m) => m.text.includes("Photoswap"))).toEqual([]);
    // The good photos were not stored either: nothing counts against the sender's quota.
    expect(await h.blobs.usage("swapper")).toBe(0);
  });

  it("passes a forced size to the job as width and height; without one the job has neither", async () => {
    const ran = trainOptions.length;
    const grids = () =>
      adapter.messages.filter((m) => m.text.includes("Pick a seed") && m.reactions.length > 0);
    const before = grids().length;
    await commands.handleCommand(imagic({ size: "768x512" }), adapter.reply(channel));
    await commands.handleCommand(imagic(), adapter.reply(channel));
    // Both jobs run to their grids, so nothing of theirs is still being posted after this test.
    await until("both grids", () => (grids().length === before + 2 ? true : undefined));
    const jobs = trainOptions.slice(ran) as Array<Record<string, unknown>>;
    expect(jobs).toHaveLength(2);
    const sized = jobs.filter((o) => "width" in o || "height" in o);
    expect(sized).toEqual([expect.objectContaining({ width: 768, height: 512, seeds: [5, 6] })]);
  });
});
