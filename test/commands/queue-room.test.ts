// A command from a user whose queue is full is refused before its photos are stored: stored, they would
// count against the user's upload quota for a day for a job that is never queued.
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandRequest } from "../../src/commands/chat.js";
import { PHOTO } from "../queue/support/setup.js";
import { type ConsoleCommands, consoleCommands, pngAttachment } from "./memory-adapter.js";

let c: ConsoleCommands;
const channel = { channel: "console" };

beforeAll(async () => {
  c = await consoleCommands({ maxQueued: 1 });
  // Other bytes than the queued command's photo: blobs are stored by content, a copy would count once.
  c.adapter.files.set("memory://other", await sharp(PHOTO).flop().png().toBuffer());
});
afterAll(() => c.close());

const request = (command: "imagic" | "swap", url: string): CommandRequest => ({
  command,
  userId: "ann",
  conversation: channel,
  options: command === "imagic" ? { prompt: "a photo of a cat" } : { subject: "cat" },
  attachments:
    command === "imagic"
      ? [pngAttachment("image", "photo.png", url)]
      : [pngAttachment("source", "photo.png", url), pngAttachment("reference1", "ref.png", url)],
});

describe("a user whose queue is full", () => {
  it("is refused /imagic and /swap before any photo is stored", async () => {
    // Nothing runs jobs here: the first /imagic stays queued and fills ann's one place.
    await c.commands.handleCommand(request("imagic", "memory://photo"), c.adapter.reply(channel));
    expect(await c.queue.queue.count()).toBe(1);
    const stored = await c.h.blobs.usage("ann");
    expect(stored).toBeGreaterThan(0);
    for (const command of ["imagic", "swap"] as const) {
      await c.commands.handleCommand(request(command, "memory://other"), c.adapter.reply(channel));
      expect(c.adapter.privateReplies.at(-1)).toMatch(
        /^⚠️ you already have 1 job in the queue, the limit is 1; wait for one to finish or cancel one/,
      );
    }
    expect(await c.h.blobs.usage("ann")).toBe(stored);
    expect(await c.queue.queue.count()).toBe(1);
  });
});
