// Slack can fail on its side (internal_error, service_unavailable…, which the WebClient does not retry; a
// 5xx or a network failure past its own retries). A job that finishes meanwhile must not lose its result:
// the bot delivers it again, after a growing delay, until Slack takes it, and the user sees it once (a
// redelivery looks for an earlier post of the grid by its metadata first).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import type { SlackCallMatch } from "./fake/server.js";
import { type World, world } from "./support.js";

const SEED_OFFER = "*Pick a seed*";
let w: World;
beforeAll(async () => {
  w = await world({
    delivery: { deliveryLeaseMs: 1_000, deliveryRetry: { firstDelayMs: 100, maxDelayMs: 400, tries: 20 } },
  });
  await w.startBot();
});
afterAll(() => w.close());

describe("a Slack outage while a result is posted", () => {
  it("delays the grid until Slack is back, and posts it once, with its image", async () => {
    await w.worker(lightweightPipelines({ steps: 20, stepMs: 100 }));
    const started = await w.imagic(w.channel("outage"), { seeds: "2" });
    const thread = await w.thread(started);
    const gridPost: SlackCallMatch = ({ method, args }) =>
      method === "chat.postMessage" && args.thread_ts === thread && String(args.text).includes(SEED_OFFER);
    const recover = w.fake.outage(gridPost);
    await w.fake.waitFor("two failed tries of the grid", () => {
      const failed = w.fake.calls.filter((c) => c.error === "service_unavailable" && gridPost(c));
      return failed.length >= 2;
    });
    recover();

    const grid = await w.offer(started.channel, thread, 1, 2);
    await w.fake.waitFor("the grid's image", () => w.fake.filesOf(grid).length === 1);
    expect(w.posted(started.channel, thread).filter((m) => m.text.includes(SEED_OFFER))).toEqual([grid]);
  });
});
