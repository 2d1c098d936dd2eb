// Discord can fail on its side (5xx answers, a network failure) for longer than discord.js's own three
// retries. A job that finishes meanwhile must not lose its result: the bot delivers it again, after a
// growing delay, until Discord takes it, and the user sees it once (each try posts with the same nonce).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RecordedRequest } from "../../../src/bots/discord/fake/server.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { opt, type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  w = await world({
    // Room in the channel's rate limit for the tests' fast progress edits.
    fake: { limits: { message: { limit: 50, windowMs: 5000 } } },
    delivery: { deliveryLeaseMs: 1_000, deliveryRetry: { firstDelayMs: 100, maxDelayMs: 400, tries: 20 } },
  });
  await w.startBot();
});
afterAll(() => w.close());

describe("a Discord outage while a result is posted", () => {
  it("delays the grid until Discord is back, and posts it once", async () => {
    await w.worker(lightweightPipelines({ steps: 40, stepMs: 100 }));
    const thread = await w.thread(w.imagic(w.fake.addTextChannel("outage"), [opt.string("seeds", "2")]));
    await w.postedStartingWith(thread, "⏳");
    const postsInThread = (r: Pick<RecordedRequest, "route" | "path">) =>
      r.route === "POST /channels/:id/messages" && r.path.endsWith(`/channels/${thread}/messages`);
    const recover = w.fake.outage(postsInThread);
    // discord.js sends each post four times before it gives up: eight 500s are two tries of the result.
    await w.fake.waitFor("two failed tries of the grid", () => {
      const failed = w.fake.requests.filter((r) => postsInThread(r) && r.status === 500);
      return failed.length >= 8;
    });
    recover();

    const grid = await w.offer(thread, 1, 2);
    expect(grid.content).toContain("**Pick a seed**");
    expect(w.posted(thread).filter((m) => m.content.includes("**Pick a seed**"))).toHaveLength(1);
    expect((await w.postedStartingWith(thread, "✅")).content).toContain("Fine-tuned");
  });
});
