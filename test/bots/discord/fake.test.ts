// The fake Discord enforces what Discord enforces, and discord.js runs against it unmodified.

import { connect } from "node:net";
import { Client, DiscordAPIError, Events, GatewayIntentBits, RateLimitError, REST, Routes } from "discord.js";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FakeDiscord } from "../../../src/bots/discord/fake/server.js";

let fake: FakeDiscord;
beforeEach(async () => {
  fake = await FakeDiscord.start({ heartbeatIntervalMs: 300 });
});
afterEach(async () => {
  await fake.close();
});

const rest = (options: { rejectOnRateLimit?: string[] } = {}) =>
  new REST({ api: fake.apiUrl, retries: 0, ...options }).setToken(fake.token);

describe("fake Discord", () => {
  it("lets discord.js identify, keeps the heartbeat and caches the guild's channels", async () => {
    const channel = fake.addTextChannel("general");
    const client = new Client({ intents: [GatewayIntentBits.Guilds], rest: { api: fake.apiUrl } });
    const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
    await client.login(fake.token);
    await ready;
    try {
      expect(fake.identifies).toEqual([{ intents: GatewayIntentBits.Guilds, shard: [0, 1] }]);
      await fake.waitFor("guild in cache", () => client.channels.cache.has(channel.id));
      await fake.waitFor("two heartbeats", () => fake.heartbeats.received >= 2, 5000);
    } finally {
      await client.destroy();
    }
  });

  it("refuses a wrong token on the gateway and on REST", async () => {
    const response = await fetch(`${fake.apiUrl}/v10/gateway/bot`, {
      headers: { authorization: "Bot nope" },
    });
    expect(response.status).toBe(401);
  });

  it("keeps serving after a client dies in the middle of sending a request (a SIGKILLed bot)", async () => {
    const channel = fake.addTextChannel("general");
    const { port } = new URL(fake.apiUrl);
    const socket = connect(Number(port), "127.0.0.1");
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    const gone = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    // Headers promise a body that never comes: the connection is cut in the middle of it.
    socket.write(
      `POST /api/v10/channels/${channel.id}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bot ${fake.token}\r\n` +
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    socket.destroy();
    await gone;
    const response = await fetch(`${fake.apiUrl}/v10/users/@me`, {
      headers: { authorization: `Bot ${fake.token}` },
    });
    expect(response.status).toBe(200);
  });

  it("answers 429 with Retry-After and X-RateLimit headers when a channel is hammered", async () => {
    const channel = fake.addTextChannel("general");
    const statuses: number[] = [];
    let limited: Response | undefined;
    for (let i = 0; i < 7; i++) {
      const response = await fetch(`${fake.apiUrl}/v10/channels/${channel.id}/messages`, {
        method: "POST",
        headers: { authorization: `Bot ${fake.token}`, "content-type": "application/json" },
        body: JSON.stringify({ content: `message ${i}` }),
      });
      statuses.push(response.status);
      if (response.status === 429) limited = response;
    }
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429]);
    if (!limited) throw new Error("no 429");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(limited.headers.get("x-ratelimit-remaining")).toBe("0");
    expect(((await limited.json()) as { retry_after: number }).retry_after).toBeGreaterThan(0);
    expect(fake.messagesIn(channel.id)).toHaveLength(5);
  });

  it("makes discord.js's REST wait (or reject) on its published limits", async () => {
    const channel = fake.addTextChannel("general");
    const client = rest({ rejectOnRateLimit: ["/channels"] });
    const send = (i: number) =>
      client.post(Routes.channelMessages(channel.id), { body: { content: `m${i}` } });
    for (let i = 0; i < 5; i++) await send(i);
    await expect(send(5)).rejects.toBeInstanceOf(RateLimitError);
  });

  it("refuses content over 2,000 characters (50035) and files over the size limit (40005)", async () => {
    const channel = fake.addTextChannel("general");
    const client = rest();
    const long = client.post(Routes.channelMessages(channel.id), { body: { content: "x".repeat(2001) } });
    await expect(long).rejects.toMatchObject({ code: 50035, status: 400 });
    const big = client.post(Routes.channelMessages(channel.id), {
      body: { content: "big" },
      files: [{ name: "big.png", data: Buffer.alloc(10 * 1024 * 1024 + 1) }],
    });
    await expect(big).rejects.toMatchObject({ code: 40005, status: 413 });
    expect(fake.messagesIn(channel.id)).toHaveLength(0);
  });

  it("expires an interaction that is not acknowledged within 3 seconds (10062)", async () => {
    const channel = fake.addTextChannel("general");
    const interaction = fake.runCommand({ name: "help", user: fake.user("ann"), channel });
    interaction.dispatchedAt -= 3001;
    const late = rest().post(Routes.interactionCallback(interaction.id, interaction.token), {
      body: { type: 5 },
      auth: false,
    });
    await expect(late).rejects.toSatisfy((e: unknown) => e instanceof DiscordAPIError && e.code === 10062);
  });

  it("names missing permissions with 50013", async () => {
    const channel = fake.addTextChannel("read-only", 0n);
    await expect(
      rest().post(Routes.channelMessages(channel.id), { body: { content: "hi" } }),
    ).rejects.toMatchObject({
      code: 50013,
    });
  });

  it("dedupes a create by the author's nonce with enforce_nonce, within its window, as Discord documents", async () => {
    const general = fake.addTextChannel("general");
    const other = fake.addTextChannel("other");
    const api = rest();
    const post = async (channelId: string, body: Record<string, unknown>) =>
      (await api.post(Routes.channelMessages(channelId), { body })) as { id: string; nonce?: string };

    const first = await post(general.id, { content: "grid", nonce: "job-7-grid", enforce_nonce: true });
    expect(first.nonce).toBe("job-7-grid");
    // The same author and nonce: the first message comes back, in any channel, and nothing is created.
    expect((await post(general.id, { content: "grid", nonce: "job-7-grid", enforce_nonce: true })).id).toBe(
      first.id,
    );
    expect((await post(other.id, { content: "grid", nonce: "job-7-grid", enforce_nonce: true })).id).toBe(
      first.id,
    );
    expect(fake.messagesIn(general.id)).toHaveLength(1);
    expect(fake.messagesIn(other.id)).toHaveLength(0);
    // Without enforce_nonce a nonce dedupes nothing.
    expect((await post(general.id, { content: "grid", nonce: "job-7-grid" })).id).not.toBe(first.id);
    // A deleted message is not brought back: the retry is answered Unknown Message.
    const deleted = await post(general.id, { content: "grid", nonce: "job-8-grid", enforce_nonce: true });
    await api.delete(Routes.channelMessage(general.id, deleted.id));
    const retried = await post(general.id, {
      content: "grid",
      nonce: "job-8-grid",
      enforce_nonce: true,
    }).catch((error: unknown) => error);
    expect(retried).toBeInstanceOf(DiscordAPIError);
    expect((retried as DiscordAPIError).code).toBe(10008);
    // Nonces are integers or strings of up to 25 characters.
    const long = await post(general.id, { content: "x", nonce: "n".repeat(26), enforce_nonce: true }).catch(
      (error: unknown) => error,
    );
    expect((long as DiscordAPIError).code).toBe(50035);
  });

  it("forgets a nonce once its window has passed", async () => {
    const short = await FakeDiscord.start({ nonceWindowMs: 200 });
    try {
      const channel = short.addTextChannel("general");
      const api = new REST({ api: short.apiUrl, retries: 0 }).setToken(short.token);
      const body = { content: "grid", nonce: 42, enforce_nonce: true };
      const first = (await api.post(Routes.channelMessages(channel.id), { body })) as { id: string };
      await new Promise((resolve) => setTimeout(resolve, 250));
      const later = (await api.post(Routes.channelMessages(channel.id), { body })) as { id: string };
      expect(later.id).not.toBe(first.id);
      expect(short.messagesIn(channel.id)).toHaveLength(2);
    } finally {
      await short.close();
    }
  });
});
