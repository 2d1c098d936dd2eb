// A command still working at 2 s gets a private "thinking…" deferral from the bot's safety net. Here
// Discord takes 1.5 s to answer that callback and Redis stalls for 2.5 s under /queue, so /queue's
// answer is ready while the deferral is still in flight: sent then, it would be a second
// acknowledgement (40060) and the user would be left with "thinking…". It must wait for the deferral.
// /imagic's answer is public, so its safety deferral is public too: a private one kept the answer from
// everyone but its author, and Discord opens no thread on an ephemeral message.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world({ fake: { callbackLatencyMs: 1500 } });
  await w.startBot();
});
afterAll(() => w.close());

/** Pauses the world's redis-server (SIGSTOP), as a stalled host would; returns how to resume it. */
async function stallRedis(): Promise<() => void> {
  const info = await w.h.redis.client().info("server");
  const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
  process.kill(pid, "SIGSTOP");
  return () => process.kill(pid, "SIGCONT");
}

describe("the safety deferral", () => {
  it("is awaited by an answer that comes while it is in flight, which then fills it in", async () => {
    const channel = w.fake.addTextChannel("stalled");
    const resume = await stallRedis();
    const queue = w.fake.runCommand({ name: "queue", user: w.author, channel });
    await new Promise((resolve) => setTimeout(resolve, 2500));
    resume();
    expect(await w.ephemeral(queue)).toBe("You have no edits queued or running.");
    expect(queue.callbackType).toBe(5);
    expect(w.fake.refused(40060)).toEqual([]);
  });

  it("is public for /imagic, whose answer is public: a stalled Redis before its acknowledgement leaves it so", async () => {
    // The command's record is written before its acknowledgement; Redis stalls, the safety net defers.
    const channel = w.fake.addTextChannel("stalled-imagic");
    const resume = await stallRedis();
    const started = w.imagic(channel);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    resume();
    await w.postedStartingWith(await w.thread(started), "🕒 Imagic fine-tune");
    const answer = w.fake.mustMessage(started.originalId ?? "");
    expect(answer.flags & 64).toBe(0);
    expect(answer.content).toMatch(/^🎨 .* asked Imagic for/);
    expect(w.fake.refused(40060)).toEqual([]);
  });

  it("leaves /imagic one public answer under slow callbacks", async () => {
    const started = w.imagic(w.fake.addTextChannel("slow-callbacks"));
    await w.postedStartingWith(await w.thread(started), "🕒 Imagic fine-tune");
    expect([started.callbackType, started.ephemeral]).toEqual([5, false]);
    expect(w.fake.refused(40060)).toEqual([]);
  });
});
