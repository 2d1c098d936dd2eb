// The adapter's own rules, without a gateway: which rate limits are Discord's edit limit on old
// messages, and a permission map that keeps only what a thread opened now could use.
import { Client, PermissionsBitField, SnowflakeUtil } from "discord.js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { DiscordAdapter, rejectOldMessageEdits } from "../../../src/bots/discord/adapter.js";

const HOUR = 3_600_000;
const limited = (method: string, route: string, messageAgeMs: number) => {
  const id = SnowflakeUtil.generate({ timestamp: Date.now() - messageAgeMs }).toString();
  return {
    method,
    route,
    url: `https://discord.com/api/v10/channels/1234567890123456789/messages/${id}`,
    global: false,
    hash: "h",
    limit: 5,
    majorParameter: "1234567890123456789",
    timeToReset: 1000,
    retryAfter: 60_000,
    sublimitTimeout: 60_000,
    scope: "user" as const,
  };
};

afterEach(() => {
  vi.useRealTimers();
});

describe("rejectOldMessageEdits", () => {
  const reject = rejectOldMessageEdits(HOUR);
  it("rejects a rate-limited edit of a message older than the edit age limit (Discord's 30046)", () => {
    expect(reject(limited("PATCH", "/channels/:id/messages/:id", HOUR + 1000))).toBe(true);
  });
  it("lets discord.js wait out any other rate limit", () => {
    expect(reject(limited("PATCH", "/channels/:id/messages/:id", HOUR - 60_000))).toBe(false);
    expect(reject(limited("POST", "/channels/:id/messages", 2 * HOUR))).toBe(false);
    expect(reject(limited("DELETE", "/channels/:id/messages/:id", 2 * HOUR))).toBe(false);
  });
});

describe("DiscordAdapter's permission map", () => {
  it("keeps the last quarter hour of reports only, so it does not grow with every channel", () => {
    vi.useFakeTimers();
    const adapter = new DiscordAdapter(new Client({ intents: [] }));
    const bits = new PermissionsBitField(PermissionsBitField.Flags.SendMessages);
    for (let i = 0; i < 500; i++) adapter.rememberPermissions(`channel-${i}`, bits);
    expect(adapter.rememberedChannels).toBe(500);
    vi.advanceTimersByTime(16 * 60_000);
    adapter.rememberPermissions("now", bits);
    expect(adapter.rememberedChannels).toBe(1);
  });
});
