import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { childLogger, configureLogger, logger } from "../src/log.js";
import { captureStderr } from "./helpers/stderr.js";

describe("logger", () => {
  it("is silent under vitest unless LOG_LEVEL says otherwise", () => {
    expect(logger.level).toBe(process.env.LOG_LEVEL ?? "silent");
  });

  it("writes JSON lines carrying the area and never a secret from the config", async () => {
    configureLogger({ level: "info", pretty: false });
    const config = loadConfig({ DISCORD_TOKEN: "token-that-must-not-leak" }, { envFile: false });
    const out = await captureStderr(() => {
      childLogger("queue", { worker: 1 }).info({ config }, "started");
      childLogger("queue").debug("below the level");
      logger.info({ token: "raw-token", headers: { authorization: "Bearer abc" } }, "request");
    });
    const lines = out
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 30, area: "queue", worker: 1, msg: "started" });
    expect(lines[0]?.config).toMatchObject({ discordToken: "[redacted]", engineDevice: "auto" });
    expect(lines[1]).toMatchObject({ token: "[redacted]", headers: { authorization: "[redacted]" } });
    expect(out).not.toContain("token-that-must-not-leak");
    expect(out).not.toContain("raw-token");
  });

  it("switches to pretty output", async () => {
    configureLogger({ level: "info", pretty: true });
    const out = await captureStderr(() => childLogger("engine").warn("fp16 unsupported"));
    configureLogger({ level: "silent", pretty: false });
    expect(out).toMatch(/WARN.*\(\d+\): fp16 unsupported/);
    expect(out).toContain('area: "engine"');
    expect(out.trim().startsWith("{")).toBe(false);
  });
});
