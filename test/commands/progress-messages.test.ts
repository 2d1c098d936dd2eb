// ProgressMessages without a chat platform: two "processes" (two instances on one Redis) and an
// in-memory adapter that can refuse edits the way a platform does.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type ChatLimits,
  MessageNotEditableError,
  type MessageRef,
  type OutgoingMessage,
} from "../../src/commands/chat.js";
import { ProgressMessages } from "../../src/commands/progress-messages.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";
import { MemoryAdapter } from "./memory-adapter.js";

let redis: TestRedis;
beforeAll(async () => {
  redis = await startTestRedis();
});
afterAll(() => redis.stop());

/** Records which process made each edit and post; refuses edits of the messages in `frozen`. */
class RecordingAdapter extends MemoryAdapter {
  readonly log: string[] = [];
  readonly frozen = new Set<string>();
  constructor(
    private readonly name: string,
    limits: Partial<ChatLimits> = {},
  ) {
    super();
    Object.assign(this.limits, { minEditIntervalMs: 10 }, limits);
  }
  override async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    if (this.frozen.has(ref.id)) throw new MessageNotEditableError("archived");
    this.log.push(`${this.name} edit ${ref.id} ${message.text}`);
  }
  override async post(to: MessageRef["conversation"], message: OutgoingMessage): Promise<MessageRef> {
    const ref = await super.post(to, message);
    this.log.push(`${this.name} post ${ref.id} ${message.text}`);
    return ref;
  }
}

const until = async (what: string, probe: () => boolean) => {
  for (let i = 0; i < 200 && !probe(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!probe()) throw new Error(`timed out waiting for ${what}`);
};

describe("ProgressMessages", () => {
  it("lets the process holding a job's lease edit it; the last word waits that lease out and comes last", async () => {
    const a = new RecordingAdapter("A");
    const b = new RecordingAdapter("B");
    const pa = new ProgressMessages({ adapter: a, redis: redis.client(), leaseMs: 300 });
    const pb = new ProgressMessages({ adapter: b, redis: redis.client(), leaseMs: 300 });
    const origin = { conversation: { channel: "c" }, id: "job-1" };
    await pa.adopt(origin);
    pa.update(origin, { text: "⏳ 1" });
    pb.update(origin, { text: "⏳ 1" });
    await until("A's edit", () => a.log.length === 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(b.log).toEqual([]);

    // B gets the job's end while A still holds the lease: B's last word waits for it, then A stays out.
    const started = Date.now();
    await pb.finish(origin, "✅ done");
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    pa.update(origin, { text: "⏳ late" });
    await new Promise((r) => setTimeout(r, 50));
    expect([...a.log, ...b.log]).toEqual(["A edit job-1 ⏳ 1", "B edit job-1 ✅ done"]);
    await pa.stop();
    await pb.stop();
  });

  it("posts a fresh message where an edit is refused, and keeps editing that one", async () => {
    const a = new RecordingAdapter("A");
    const pa = new ProgressMessages({ adapter: a, redis: redis.client(), leaseMs: 300 });
    const origin = { conversation: { channel: "c", thread: "t" }, id: "job-2" };
    await pa.adopt(origin);
    a.frozen.add("job-2");
    pa.update(origin, { text: "⏳ 1" });
    await until("a post", () => a.log.length === 1);
    pa.update(origin, { text: "⏳ 2" });
    await until("an edit", () => a.log.length === 2);
    await pa.finish(origin, "✅ done");
    const fresh = a.messages.at(-1)?.ref.id;
    expect(a.log).toEqual([`A post ${fresh} ⏳ 1`, `A edit ${fresh} ⏳ 2`, `A edit ${fresh} ✅ done`]);
    expect(a.messages.at(-1)?.ref.conversation).toEqual({ channel: "c", thread: "t" });
    await pa.stop();
  });

  it("forgets the jobs it held once their leases have run out, so that map shrinks back too", async () => {
    const a = new RecordingAdapter("A");
    const pa = new ProgressMessages({ adapter: a, redis: redis.client(), leaseMs: 100 });
    for (let i = 0; i < 50; i++) await pa.adopt({ conversation: { channel: "c" }, id: `many-${i}` });
    expect(pa.holding).toBe(50);
    // Longer than a lease: every one of those leases has expired in Redis as well.
    await new Promise((r) => setTimeout(r, 150));
    await pa.adopt({ conversation: { channel: "c" }, id: "one-more" });
    expect(pa.holding).toBe(1);
    await pa.stop();
    expect(pa.holding).toBe(0);
  });

  it("replaces a message as it nears the platform's edit age limit, pointing the old one at the new", async () => {
    const a = new RecordingAdapter("A", { maxEditAgeMs: 300 });
    const pa = new ProgressMessages({ adapter: a, redis: redis.client(), leaseMs: 300 });
    const origin = { conversation: { channel: "c" }, id: "job-3" };
    await pa.adopt(origin);
    pa.update(origin, { text: "⏳ 1" });
    await until("an edit", () => a.log.length === 1);
    await new Promise((r) => setTimeout(r, 280));
    pa.update(origin, { text: "⏳ 2" });
    await until("the replacement", () => a.log.length === 3);
    const fresh = a.messages.at(-1)?.ref.id;
    expect(a.log).toEqual([
      "A edit job-3 ⏳ 1",
      `A post ${fresh} ⏳ 2`,
      "A edit job-3 ⏬ Progress continues in a newer message below.",
    ]);
    await pa.stop();
  });

  it("shows every stage a job went through before its last word, however fast the stages went", async () => {
    const a = new RecordingAdapter("A", { minEditIntervalMs: 50 });
    const pa = new ProgressMessages({ adapter: a, redis: redis.client(), leaseMs: 300 });
    const origin = { conversation: { channel: "c" }, id: "job-4" };
    await pa.adopt(origin);
    // A whole job's progress between two edits (a fast machine, or a long edit interval): the updates
    // are made before the first edit can run, so what shows does not depend on timing.
    for (const [stage, step] of [
      ["embedding", 1],
      ["embedding", 2],
      ["finetune", 1],
      ["finetune", 2],
    ] as const) {
      pa.update(origin, { text: `⏳ ${stage} ${step}/2`, stage });
    }
    await pa.finish(origin, "✅ done");
    expect(a.log).toEqual([
      "A edit job-4 ⏳ embedding 2/2",
      "A edit job-4 ⏳ finetune 2/2",
      "A edit job-4 ✅ done",
    ]);

    // Closed: a late update of this job shows nothing.
    pa.update(origin, { text: "⏳ finetune 2/2", stage: "finetune" });
    await new Promise((r) => setTimeout(r, 200));
    expect(a.log).toHaveLength(3);
    await pa.stop();
  });
});
