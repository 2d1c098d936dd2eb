// ProgressMessages on Redis and the in-memory adapter: what a job's one progress message goes through.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { MessageRef, OutgoingMessage } from "../../src/commands/chat.js";
import { ProgressMessages } from "../../src/commands/progress-messages.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";
import { MemoryAdapter } from "./memory-adapter.js";

/** The in-memory adapter, keeping every text each message was edited to. */
class RecordingAdapter extends MemoryAdapter {
  readonly edits = new Map<string, string[]>();
  override async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    this.edits.set(ref.id, [...(this.edits.get(ref.id) ?? []), message.text]);
    await super.editMessage(ref, message);
  }
}

let redis: TestRedis;
beforeAll(async () => {
  redis = await startTestRedis();
});
afterAll(() => redis.stop());

describe("ProgressMessages", () => {
  it("shows every stage a job went through before its last word, however fast the stages went", async () => {
    const adapter = new RecordingAdapter();
    const messages = new ProgressMessages({ adapter, redis: redis.client() });
    const ref = await adapter.post({ channel: "c" }, { text: "🕒 Sending to the queue…" });
    await messages.adopt(ref);
    // A whole job's progress between two edits (on a fast machine, or under a long edit interval).
    for (const [stage, step] of [
      ["embedding", 1],
      ["embedding", 2],
      ["finetune", 1],
      ["finetune", 2],
    ] as const) {
      messages.update(ref, { text: `${stage} ${step}/2`, stage });
    }
    await messages.finish(ref, "✅ Fine-tuned on your photo.");
    expect(adapter.edits.get(ref.id)).toEqual([
      "embedding 2/2",
      "finetune 2/2",
      "✅ Fine-tuned on your photo.",
    ]);

    // Closed: a late update of this job shows nothing.
    messages.update(ref, { text: "finetune 2/2", stage: "finetune" });
    await new Promise((r) => setTimeout(r, 3 * adapter.limits.minEditIntervalMs));
    expect(adapter.edits.get(ref.id)).toHaveLength(3);
    await messages.stop();
  });
});
