// The Slack bot as `start` and `bot run` run it: from settings, against a Redis URL, in either mode.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { slackService } from "../../../src/bots/slack/service.js";
import { loadConfig } from "../../../src/config.js";
import { childLogger } from "../../../src/log.js";
import { startTestRedis, type TestRedis } from "../../helpers/redis.js";
import { freePort } from "../../queue/support/setup.js";
import { FakeSlack } from "./fake/server.js";
import { PHOTO } from "./support.js";

let fake: FakeSlack;
let redis: TestRedis;
beforeAll(async () => {
  fake = await FakeSlack.start();
  redis = await startTestRedis();
});
afterAll(async () => {
  await redis.stop();
  await fake.close();
});

const context = (env: Record<string, string>) => ({
  config: loadConfig({ STATE_DIR: "/tmp/slack-service-test", ...env }),
  redisUrl: redis.url,
  log: childLogger("test"),
});

/** Runs /imagic help as a user and waits for the bot's private answer. */
async function help(): Promise<string> {
  const user = fake.user("ann");
  fake.command(user, fake.channel("c", [user]), "/imagic", "help");
  return (await fake.waitFor("the /imagic help answer", () => fake.ephemeralsFor(user)[0])).text;
}

describe("slackService", () => {
  it("connects in Socket Mode with SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_API_URL, answers, and stops cleanly", async () => {
    const service = await slackService({ required: true }).start(
      context({ SLACK_BOT_TOKEN: fake.botToken, SLACK_APP_TOKEN: fake.appToken, SLACK_API_URL: fake.apiUrl }),
    );
    try {
      expect(fake.deliveries.connected).toBe(1);
      expect(await help()).toContain("/imagic");
    } finally {
      await service.stop();
    }
    await fake.waitFor("the Socket Mode connection to close", () => fake.deliveries.connected === 0);
  });

  it("measures an /imagic prompt with the model's tokenizer before queuing: one CLIP would cut is refused under its field", async () => {
    const service = await slackService({ required: true }).start(
      context({ SLACK_BOT_TOKEN: fake.botToken, SLACK_APP_TOKEN: fake.appToken, SLACK_API_URL: fake.apiUrl }),
    );
    try {
      const user = fake.user("ann");
      const { trigger } = fake.command(user, fake.channel("long-prompt", [user]), "/imagic", "");
      const view = await fake.viewFor(trigger);
      const long = Array.from({ length: 90 }, (_, i) => ["red", "cat", "big", "dog"][i % 4]).join(" ");
      const submission = fake.submit(view, user, {
        image: [fake.upload(user, "photo.png", PHOTO)],
        prompt: long,
      });
      await submission.settled;
      const { errors } = submission.response as { errors: Record<string, string> };
      expect(errors.prompt).toMatch(/^prompt is longer than the 75 tokens CLIP reads: it would be cut after/);
      expect(view.open).toBe(true);
    } finally {
      await service.stop();
    }
  });

  it("listens on SLACK_HTTP_PORT in HTTP mode with SLACK_SIGNING_SECRET", async () => {
    const port = await freePort();
    fake.useHttp(`http://127.0.0.1:${port}/slack/events`);
    const service = await slackService({ required: true }).start(
      context({
        SLACK_MODE: "http",
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_SIGNING_SECRET: fake.signingSecret,
        SLACK_HTTP_PORT: String(port),
        SLACK_API_URL: fake.apiUrl,
      }),
    );
    try {
      expect(await help()).toContain("/imagic");
    } finally {
      await service.stop();
      fake.deliveries.http = undefined;
    }
  });

  it("does nothing in `start` without Slack settings; otherwise names the one its mode is missing", async () => {
    const idle = await slackService({ required: false }).start(context({}));
    await idle.stop();
    expect(fake.deliveries.connected).toBe(0);
    const missing = (env: Record<string, string>) => slackService({ required: false }).start(context(env));
    await expect(slackService({ required: true }).start(context({}))).rejects.toThrow(
      "SLACK_BOT_TOKEN is required for the Slack bot (SLACK_MODE=socket): set it in the environment or .env",
    );
    await expect(missing({ SLACK_BOT_TOKEN: fake.botToken })).rejects.toThrow(
      "SLACK_APP_TOKEN is required for the Slack bot (SLACK_MODE=socket)",
    );
    await expect(missing({ SLACK_MODE: "http", SLACK_BOT_TOKEN: fake.botToken })).rejects.toThrow(
      "SLACK_SIGNING_SECRET is required for the Slack bot (SLACK_MODE=http)",
    );
    // Tokens swapped by mistake are caught by their prefixes when the settings are read.
    expect(() => context({ SLACK_BOT_TOKEN: fake.appToken })).toThrow(
      "SLACK_BOT_TOKEN must be the Slack bot token (xoxb-…)",
    );
  });

  it("names the token Slack refuses at start-up", async () => {
    const start = (env: Record<string, string>) =>
      slackService({ required: true }).start(context({ SLACK_API_URL: fake.apiUrl, ...env }));
    await expect(start({ SLACK_BOT_TOKEN: "xoxb-revoked", SLACK_APP_TOKEN: fake.appToken })).rejects.toThrow(
      "Slack refused SLACK_BOT_TOKEN: the token is not valid (revoked, or copied wrong); see docs/SLACK.md",
    );
    await expect(start({ SLACK_BOT_TOKEN: fake.botToken, SLACK_APP_TOKEN: "xapp-revoked" })).rejects.toThrow(
      "Slack refused SLACK_APP_TOKEN: the token is not valid (revoked, or copied wrong); see docs/SLACK.md",
    );
    expect(fake.deliveries.connected).toBe(0);
  });
});
