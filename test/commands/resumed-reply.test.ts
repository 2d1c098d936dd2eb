// How a command is answered when another process runs it again from its record (src/commands/pending.ts):
// the process that wrote the record is simulated by writing it here and never renewing its lease, and the
// ChatCommands under test resumes it once the lease runs out. Also: a command whose acknowledgement fails
// is told so and leaves no record behind (nothing resumes it later, after its author was told to retry).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type {
  CommandReply,
  CommandRequest,
  Conversation,
  MessageRef,
  OutgoingMessage,
  ReplyHandle,
} from "../../src/commands/chat.js";
import { PendingCommands } from "../../src/commands/pending.js";
import { ChatCommands } from "../../src/commands/service.js";
import type { QueueClient } from "../../src/queue/client.js";
import { type Harness, harness, PHOTO, until } from "../queue/support/setup.js";
import { MemoryAdapter, pngAttachment } from "./memory-adapter.js";

const LEASE_MS = 300;

/** A MemoryAdapter whose platform can answer a request in place of its placeholder, as Discord can. */
class EditingAdapter extends MemoryAdapter {
  readonly edits: { handle: ReplyHandle; message: OutgoingMessage }[] = [];
  async answerOriginal(handle: ReplyHandle, to: Conversation, message: OutgoingMessage): Promise<MessageRef> {
    this.edits.push({ handle, message });
    return this.post(to, message);
  }
}

let h: Harness;
let queue: QueueClient;
let adapter: EditingAdapter;
let commands: ChatCommands;
let records: PendingCommands;

beforeAll(async () => {
  h = await harness();
  queue = await h.client({ consumer: "console", platform: "console" });
  adapter = new EditingAdapter();
  adapter.files.set("memory://photo", PHOTO);
  commands = new ChatCommands({
    adapter,
    queue,
    blobs: h.blobs,
    redis: h.redis.client(),
    commandLeaseMs: LEASE_MS,
  });
  await commands.start();
  records = new PendingCommands(h.redis.client(), adapter.platform, LEASE_MS);
});
afterAll(async () => {
  await commands.stop();
  await h.close();
});

const imagic = (id: string, channel: string): CommandRequest => ({
  id,
  command: "imagic",
  userId: "ann",
  conversation: { channel },
  options: { prompt: "a photo of a cat", seeds: "5,6" },
  attachments: [pngAttachment("image", "photo.png")],
});

const answered = (channel: string) =>
  adapter.messages.find((m) => m.ref.conversation.channel === channel && m.text.includes("asked Imagic"));

async function answerIn(channel: string) {
  await until(() => answered(channel) !== undefined, 10_000, "the resumed answer");
  return answered(channel) as NonNullable<ReturnType<typeof answered>>;
}

describe("a command resumed from its record", () => {
  it("answers in place of the request's placeholder while the platform still takes the handle", async () => {
    const handle = { secret: "live", until: Date.now() + 60_000 };
    await records.open(imagic("11111111-aaaa-4aaa-8aaa-000000000001", "live"), handle);
    const answer = await answerIn("live");
    expect(adapter.edits.map((e) => e.handle)).toEqual([handle]);
    expect(adapter.edits[0]?.message.text).toBe(answer.text);
    await until(
      async () => (await queue.queue.getJob("imagic-11111111-aaaa-4aaa-8aaa-000000000001")) !== undefined,
      10_000,
      "the job",
    );
  });

  it("posts its answer without trying the edit once the handle has expired", async () => {
    const before = adapter.edits.length;
    await records.open(imagic("11111111-aaaa-4aaa-8aaa-000000000002", "expired"), {
      secret: "expired",
      until: Date.now() - 1,
    });
    const answer = await answerIn("expired");
    expect(answer.ref.conversation).toEqual({ channel: "expired" });
    expect(adapter.edits.length).toBe(before);
    await until(
      async () => (await queue.queue.getJob("imagic-11111111-aaaa-4aaa-8aaa-000000000002")) !== undefined,
      10_000,
      "the job",
    );
  });
});

it("a command whose acknowledgement fails tells its author and leaves no record to resume", async () => {
  const told: string[] = [];
  const reply: CommandReply = {
    acknowledge: () => Promise.reject(new Error("Unknown interaction")),
    private: async (text) => void told.push(text),
    public: (message) => adapter.post({ channel: "refused" }, message),
  };
  await commands.handleCommand(imagic("11111111-aaaa-4aaa-8aaa-000000000003", "refused"), reply);
  expect(told).toEqual([expect.stringContaining("Something went wrong on my side")]);
  // Past two leases: a record left behind would have been resumed by now.
  await new Promise((resolve) => setTimeout(resolve, 3 * LEASE_MS));
  expect(adapter.messages.filter((m) => m.ref.conversation.channel === "refused")).toEqual([]);
  expect(await queue.queue.getJob("imagic-11111111-aaaa-4aaa-8aaa-000000000003")).toBeUndefined();
});
