// A command from a user whose queue is full is refused before its photos are stored: stored, they would
// count against the user's upload quota for a day for a job that is never queued.
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandRequest } from "../../src/commands/chat.js";
import { ChatCommands } from "../../src/commands/service.js";
import type { QueueClient } from "../../src/queue/client.js";
import { type Harness, harness, PHOTO } from "../queue/support/setup.js";
import { MemoryAdapter, pngAttachment } from "./memory-adapter.js";

let h: Harness;
let queue: QueueClient;
let adapter: MemoryAdapter;
let commands: ChatCommands;
const channel = { channel: "console" };

beforeAll(async () => {
  h = await harness();
  queue = await h.client({ consumer: "console", platform: "console", limits: { maxQueued: 1 } });
  adapter = new MemoryAdapter();
  adapter.files.set("memory://photo", PHOTO);
  // Other bytes than the queued command's photo: blobs are stored by content, a copy would count once.
  adapter.files.set("memory://other", await sharp(PHOTO).flop().png().toBuffer());
  commands = new ChatCommands({ adapter, queue, blobs: h.blobs, redis: h.redis.client() });
  await commands.start();
});
afterAll(async () => {
  await commands.stop();
  await h.close();
});

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
    await commands.handleCommand(request("imagic", "memory://photo"), adapter.reply(channel));
    expect(await queue.queue.count()).toBe(1);
    const stored = await h.blobs.usage("ann");
    expect(stored).toBeGreaterThan(0);
    for (const command of ["imagic", "swap"] as const) {
      await commands.handleCommand(request(command, "memory://other"), adapter.reply(channel));
      expect(adapter.privateReplies.at(-1)).toMatch(
        /^⚠️ you already have 1 job in the queue, the limit is 1; wait for one to finish or cancel one/,
      );
    }
    expect(await h.blobs.usage("ann")).toBe(stored);
    expect(await queue.queue.count()).toBe(1);
  });
});
