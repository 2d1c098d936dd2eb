// The fake Slack enforces what Slack enforces, and @slack/web-api, @slack/socket-mode and Bolt's request
// verification run against it unmodified; the adapter's download refusals are checked against it too.
import { isValidSlackRequest, webApi } from "@slack/bolt";
import { SocketModeClient } from "@slack/socket-mode";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { SlackAdapter } from "../../../src/bots/slack/adapter.js";
import { sign } from "./fake/delivery.js";
import { FakeSlack } from "./fake/server.js";
import { PHOTO } from "./support.js";

let fake: FakeSlack;
beforeEach(async () => {
  fake = await FakeSlack.start({ windowMs: 300 });
});
afterEach(async () => {
  await fake.close();
});

const client = (token = fake.botToken, options: webApi.WebClientOptions = {}) =>
  new webApi.WebClient(token, { slackApiUrl: fake.apiUrl, retryConfig: { retries: 0 }, ...options });

describe("fake Slack's Web API", () => {
  it("answers { ok: false, error } the way the WebClient expects: bad tokens, missing scopes, unknown messages", async () => {
    await expect(client("xoxb-wrong").auth.test()).rejects.toMatchObject({
      code: webApi.ErrorCode.PlatformError,
      data: { ok: false, error: "invalid_auth" },
    });
    fake.scopes.delete("chat:write");
    const channel = fake.channel("general", []);
    await expect(client().chat.postMessage({ channel: channel.id, text: "hi" })).rejects.toMatchObject({
      data: { error: "missing_scope", needed: "chat:write" },
    });
    fake.scopes.add("chat:write");
    await expect(
      client().chat.update({ channel: channel.id, ts: "1.000001", text: "x" }),
    ).rejects.toMatchObject({
      data: { error: "message_not_found" },
    });
    const outside = fake.channel("outside", [], { bot: false });
    await expect(client().chat.postMessage({ channel: outside.id, text: "hi" })).rejects.toMatchObject({
      data: { error: "not_in_channel" },
    });
  });

  it("answers a burst with 429 and Retry-After: the WebClient waits it out, or rejects when told to", async () => {
    fake.forcedLimits.set("chat.postMessage", 1);
    const channel = fake.channel("general", []);
    const strict = client(fake.botToken, { rejectRateLimitedCalls: true });
    await expect(strict.chat.postMessage({ channel: channel.id, text: "one" })).rejects.toMatchObject({
      code: webApi.ErrorCode.RateLimitedError,
      retryAfter: 1,
    });
    fake.forcedLimits.set("chat.postMessage", 1);
    const started = Date.now();
    const sent = await client(fake.botToken, { retryConfig: { retries: 2 } }).chat.postMessage({
      channel: channel.id,
      text: "two",
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(fake.posted(channel.id).map((m) => m.text)).toEqual(["two"]);
    expect(sent.ts).toBe(fake.posted(channel.id)[0]?.ts);
    expect(fake.calls.filter((c) => c.status === 429)).toHaveLength(2);
  });

  it("runs the external upload flow (filesUploadV2) and attaches the files to a message with chat.update", async () => {
    const channel = fake.channel("general", []);
    const web = client();
    const { ts = "" } = await web.chat.postMessage({ channel: channel.id, text: "grid below" });
    const uploaded = await web.filesUploadV2({ file_uploads: [{ file: PHOTO, filename: "grid.png" }] });
    const [completion] = uploaded.files as Array<{ files: Array<{ id: string }> }>;
    const fileId = completion?.files[0]?.id ?? "";
    expect(fake.calls.map((c) => c.method)).toEqual([
      "chat.postMessage",
      "files.getUploadURLExternal",
      "files.completeUploadExternal",
    ]);
    await web.chat.update({ channel: channel.id, ts, text: "grid below", file_ids: [fileId] });
    const [message] = fake.posted(channel.id);
    if (!message) throw new Error("no message");
    expect(fake.filesOf(message)).toMatchObject([
      { name: "grid.png", mimetype: "image/png", size: PHOTO.byteLength },
    ]);
    expect(Buffer.from(fake.files.get(fileId)?.bytes ?? [])).toEqual(PHOTO);
    // A file that was never uploaded cannot be attached.
    await expect(
      web.chat.update({ channel: channel.id, ts, text: "x", file_ids: ["F0NOPE"] }),
    ).rejects.toMatchObject({
      data: { error: "file_not_found" },
    });
  });

  it("opens a form only with a fresh, unused trigger and a view Slack accepts", async () => {
    const user = fake.user("ann");
    const channel = fake.channel("general", [user]);
    const view = { type: "modal" as const, title: { type: "plain_text" as const, text: "ok" }, blocks: [] };
    const { trigger } = fake.command(user, channel, "/imagic");
    await expect(
      client().views.open({
        trigger_id: trigger,
        view: { ...view, title: { type: "plain_text", text: "x".repeat(25) } },
      }),
    ).rejects.toMatchObject({ data: { error: "invalid_arguments" } });
    const input = (element: Record<string, unknown>) => ({
      ...view,
      submit: { type: "plain_text" as const, text: "Go" },
      blocks: [
        {
          type: "input" as const,
          block_id: "prompt",
          label: { type: "plain_text" as const, text: "prompt" },
          element: { type: "plain_text_input" as const, action_id: "value", ...element },
        },
      ],
    });
    for (const element of [{ max_length: 3001 }, { max_length: 5, initial_value: "123456" }]) {
      await expect(client().views.open({ trigger_id: trigger, view: input(element) })).rejects.toMatchObject({
        data: { error: "invalid_arguments" },
      });
    }
    await client().views.open({ trigger_id: trigger, view });
    await expect(client().views.open({ trigger_id: trigger, view })).rejects.toMatchObject({
      data: { error: "trigger_exchanged" },
    });
    const late = fake.command(user, channel, "/imagic").trigger;
    await new Promise((r) => setTimeout(r, 350));
    await expect(client().views.open({ trigger_id: late, view })).rejects.toMatchObject({
      data: { error: "expired_trigger_id" },
    });
  });
});

describe("fake Slack's private files", () => {
  it("serves a file's bytes for the bot token only; anyone else gets the sign-in page", async () => {
    const user = fake.user("ann");
    const file = fake.upload(user, "cat.png", PHOTO);
    const { file: info } = await client().files.info({ file: file.id });
    const url = info?.url_private_download ?? "";
    const withToken = await fetch(url, { headers: { authorization: `Bearer ${fake.botToken}` } });
    expect(Buffer.from(await withToken.arrayBuffer())).toEqual(PHOTO);
    const anonymous = await fetch(url);
    expect(anonymous.headers.get("content-type")).toMatch(/^text\/html/);
  });

  it("makes the adapter name what went wrong: no files:read, a file not on Slack, a deleted file, a file over the limit", async () => {
    const user = fake.user("ann");
    const file = fake.upload(user, "cat.png", PHOTO);
    const attachment = {
      option: "image",
      filename: "cat.png",
      contentType: "image/png",
      size: PHOTO.byteLength,
      url: String(fake.fileJson(file).url_private_download),
    };
    const adapter = new SlackAdapter(client(), fake.botToken);
    expect(Buffer.from(await adapter.download(attachment, PHOTO.byteLength))).toEqual(PHOTO);
    await expect(adapter.download(attachment, 1000)).rejects.toThrow(
      "`image` (cat.png) is larger than 1000 B, the limit",
    );
    fake.scopes.delete("files:read");
    await expect(adapter.download(attachment, PHOTO.byteLength)).rejects.toThrow(
      "`image` (cat.png) could not be downloaded: Slack sent its sign-in page, so this app lacks the files:read scope (an admin must add it; see docs/SLACK.md)",
    );
    fake.scopes.add("files:read");
    // The token is sent to Slack only, whatever URL a file claims.
    for (const url of [
      "https://files.example.com/cat.png",
      `http://127.0.0.2:${new URL(fake.origin).port}/x.png`,
    ]) {
      await expect(adapter.download({ ...attachment, url }, PHOTO.byteLength)).rejects.toThrow(
        "`image` (cat.png) is not a file on Slack; upload it to Slack",
      );
    }
    fake.deleteFile(file);
    await expect(adapter.download(attachment, PHOTO.byteLength)).rejects.toThrow(
      "`image` (cat.png) is no longer on Slack (deleted?); upload it again",
    );
  });
});

describe("fake Slack's delivery", () => {
  it("gives Socket Mode to the app-level token only, and retries an event the app does not acknowledge", async () => {
    await expect(client().apps.connections.open()).rejects.toMatchObject({
      data: { error: "not_allowed_token_type" },
    });
    const socket = new SocketModeClient({
      appToken: fake.appToken,
      clientOptions: { slackApiUrl: fake.apiUrl },
    });
    const seen: Array<{ retry: number | undefined; eventId: string }> = [];
    socket.on("reaction_added", ({ body, retry_num, ack }) => {
      seen.push({ retry: retry_num, eventId: body.event_id });
      if (retry_num === 1) void ack(); // the first delivery goes unanswered
    });
    await socket.start();
    try {
      const user = fake.user("ann");
      const message = fake.post(user, fake.channel("general", [user]), "hi");
      const first = fake.react(user, message, "eyes");
      await first.settled;
      expect(first.ackedAt).toBeUndefined();
      await fake.waitFor("the retry to be acknowledged", () =>
        fake.deliveries.sent.find((d) => d.retry === 1 && d.ackedAt),
      );
      expect(seen).toEqual([
        { retry: 0, eventId: first.payload.event_id },
        { retry: 1, eventId: first.payload.event_id },
      ]);
    } finally {
      await socket.disconnect();
    }
  });

  it("takes a response_url 5 times within its lifetime (Slack: 30 minutes), then refuses it", async () => {
    const short = await FakeSlack.start({ responseUrlMs: 300 });
    try {
      const user = short.user("ann");
      const channel = short.channel("general", [user]);
      const respond = (url: unknown, text: string) =>
        fetch(String(url), { method: "POST", body: JSON.stringify({ text }) }).then(async (r) => [
          r.status,
          await r.text(),
        ]);
      const used = short.command(user, channel, "/imagic", "queue").delivery.payload.response_url;
      for (let i = 1; i <= 5; i++) expect(await respond(used, `answer ${i}`)).toEqual([200, "ok"]);
      expect(await respond(used, "answer 6")).toEqual([404, "used_url"]);
      expect(short.ephemeralsFor(user).map((e) => e.text)).toHaveLength(5);
      const late = short.command(user, channel, "/imagic", "queue").delivery.payload.response_url;
      await new Promise((r) => setTimeout(r, 350));
      expect(await respond(late, "too late")).toEqual([404, "expired_url"]);
    } finally {
      await short.close();
    }
  });

  it("signs HTTP requests as Bolt verifies them (v0 HMAC of timestamp and body)", () => {
    const body = "command=%2Fimagic&text=hi";
    const now = Math.floor(Date.now() / 1000);
    const headers = (timestamp: number, signature: string) => ({
      "x-slack-signature": signature,
      "x-slack-request-timestamp": timestamp,
      "content-type": "application/x-www-form-urlencoded",
    });
    const valid = (timestamp: number, signature: string) =>
      isValidSlackRequest({
        signingSecret: fake.signingSecret,
        body,
        headers: headers(timestamp, signature),
      });
    expect(valid(now, sign(fake.signingSecret, now, body))).toBe(true);
    expect(valid(now, sign("another secret", now, body))).toBe(false);
    expect(valid(now - 301, sign(fake.signingSecret, now - 301, body))).toBe(false);
  });
});
