// SLACK_MODE=http: Slack posts signed requests to the bot's request URL (Bolt's HTTPReceiver). The flow
// is the same as in Socket Mode; requests with a bad signature or a stale timestamp are refused (401) and
// logged without any secret; Slack's retries (X-Slack-Retry-Num) queue nothing twice.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configureLogger } from "../../../src/log.js";
import { captureStderr } from "../../helpers/stderr.js";
import { lightweightPipelines } from "../../queue/support/pipelines.js";
import { sign } from "./fake/delivery.js";
import { type World, world } from "./support.js";

let w: World;
beforeAll(async () => {
  // Warnings are what a refused request leaves behind: let them through (the bot's logger is made at start).
  configureLogger({ level: "warn", pretty: false });
  w = await world({ mode: "http" });
  await w.startBot();
  await w.worker(lightweightPipelines({ steps: 2, stepMs: 10 }));
});
afterAll(async () => {
  await w.close();
  configureLogger({ level: "silent", pretty: false });
});

const jobCount = async () => Object.values(await w.queue.queue.getJobCounts()).reduce((a, b) => a + b, 0);

describe("HTTP mode", () => {
  it("runs /imagic over signed requests: form, thread, grid, pick; a retried event queues nothing twice", async () => {
    const started = await w.imagic(w.channel("http"), { seeds: "2" });
    await started.submission.settled;
    expect(started.submission.status).toBe(200);
    const thread = await w.thread(started);
    const grid = await w.offer(started.channel, thread, 1, 2);

    const pick = w.fake.react(w.author, grid, "one");
    await pick.settled;
    expect(pick.status).toBe(200);
    // Slack did not see the answer in time and sends the event again, with X-Slack-Retry-Num: 1.
    const retry = w.fake.redeliver(pick);
    await retry.settled;
    expect([retry.retry, retry.status]).toEqual([1, 200]);
    await w.offer(started.channel, thread, 2, 5);
    await new Promise((r) => setTimeout(r, 300));
    const renders = (await w.queue.queue.getJobs(["completed", "active", "waiting"])).filter(
      (j) => j.name === "imagic.render",
    );
    expect(renders).toHaveLength(1);
    expect(
      w.posted(started.channel, thread).filter((m) => m.text.includes("*Pick the final image*")),
    ).toHaveLength(1);
  });

  it("answers Slack's URL check (url_verification) when the operator sets the request URL", async () => {
    const body = JSON.stringify({
      token: "verification-token",
      challenge: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
      type: "url_verification",
    });
    const response = await w.fake.postToApp({ body, contentType: "application/json" });
    expect(response.status).toBe(200);
    expect(JSON.parse(response.text)).toEqual({
      challenge: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
    });
  });

  it("refuses a request with a bad signature or a timestamp over 5 minutes old, and logs why without secrets", async () => {
    const channel = w.channel("forged");
    const jobs = await jobCount();
    const views = w.fake.views.size;
    const command = new URLSearchParams({
      command: "/imagic",
      text: "a photo of a forged cat",
      user_id: w.author.id,
      channel_id: channel.id,
      trigger_id: "1.forged",
      response_url: `${w.fake.origin}/respond/none`,
      team_id: w.fake.teamId,
    }).toString();
    const form = "application/x-www-form-urlencoded";
    const now = Math.floor(Date.now() / 1000);
    const stale = now - 6 * 60;
    const forgedSignature = sign("not-the-signing-secret", now, command);
    const logs = await captureStderr(async () => {
      const forged = await w.fake.postToApp({ body: command, contentType: form, signature: forgedSignature });
      expect(forged.status).toBe(401);
      // A stale request is refused even when its signature is right (a captured request replayed later).
      const replayed = await w.fake.postToApp({ body: command, contentType: form, timestamp: stale });
      expect(replayed.status).toBe(401);
      const unsigned = await w.fake.postToApp({ body: command, contentType: form, signature: "" });
      expect(unsigned.status).toBe(401);
    });
    expect(logs).toContain("signature mismatch");
    expect(logs).toContain("must differ from system time by no more than 5 minutes or request is stale");
    for (const secret of [w.fake.signingSecret, w.fake.botToken, forgedSignature.slice(3)]) {
      expect(logs).not.toContain(secret);
    }
    // Nothing happened: no form, no job.
    await new Promise((r) => setTimeout(r, 200));
    expect(w.fake.views.size).toBe(views);
    expect(await jobCount()).toBe(jobs);
  });
});
