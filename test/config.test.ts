import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import path from "node:path";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import {
  FIXTURE_MODEL,
  loadConfig,
  redactedConfig,
  requireSetting,
  SETTING_NAMES,
  Secret,
} from "../src/config.js";
import { ConfigError, UserFacingError } from "../src/errors.js";

const load = (env: Record<string, string>) => loadConfig(env, { envFile: false, isTTY: false });

function errorOf(env: Record<string, string>): ConfigError {
  try {
    load(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("loadConfig accepted a bad environment");
}

describe("loadConfig", () => {
  it("fills every default on an empty environment", () => {
    const config = load({});
    expect(config).toMatchObject({
      logLevel: "info",
      logPretty: false,
      stateDir: path.resolve(".state"),
      redisUrl: undefined,
      model: FIXTURE_MODEL,
      modelIsFixture: true,
      modelCacheDir: path.join(homedir(), ".cache", "huggingface", "hub"),
      modelRevision: "main",
      modelVariant: "auto",
      hfHubOffline: false,
      hfEndpoint: "https://huggingface.co",
      hfToken: undefined,
      engineDevice: "auto",
      engineDtype: "auto",
      engineTrainDtype: "auto",
      engineTrainingSessions: "shared",
      engineHttpPort: 9464,
      engineLockSeconds: undefined,
      discordToken: undefined,
      blobTtlSeconds: 86400,
      blobMaxBytes: 20 * 1024 * 1024,
      userMaxActiveJobs: 2,
      userMaxQueuedJobs: 5,
    });
  });

  it("parses set values and treats empty values as unset", () => {
    const config = load({
      LOG_LEVEL: "debug",
      LOG_PRETTY: "true",
      STATE_DIR: "/srv/bot",
      REDIS_URL: "redis://redis:6379/2",
      MODEL: "runwayml/stable-diffusion-v1-5",
      ENGINE_DEVICE: "webgpu",
      ENGINE_DTYPE: "fp16",
      ENGINE_TRAIN_DTYPE: "fp32",
      ENGINE_CUDA_OPTIONS: "prefer_nhwc=1, cudnn_conv_algo_search=HEURISTIC",
      ENGINE_TRAINING_SESSIONS: "per-stage",
      ENGINE_HTTP_PORT: "0",
      ENGINE_LOCK_SECONDS: "20",
      DISCORD_APPLICATION_ID: "123456789012345678",
      BLOB_MAX_BYTES: "512KiB",
      USER_MAX_QUEUED_JOBS: "9",
      DISCORD_GUILD_ID: "",
    });
    expect(config).toMatchObject({
      logLevel: "debug",
      logPretty: true,
      stateDir: "/srv/bot",
      redisUrl: "redis://redis:6379/2",
      model: "runwayml/stable-diffusion-v1-5",
      modelIsFixture: false,
      engineDevice: "webgpu",
      engineDtype: "fp16",
      engineTrainDtype: "fp32",
      engineCudaOptions: { prefer_nhwc: "1", cudnn_conv_algo_search: "HEURISTIC" },
      engineTrainingSessions: "per-stage",
      engineHttpPort: 0,
      engineLockSeconds: 20,
      discordApplicationId: "123456789012345678",
      discordGuildId: undefined,
      blobMaxBytes: 512 * 1024,
      userMaxQueuedJobs: 9,
    });
  });

  it("finds the Hugging Face cache where huggingface_hub and diffusers look; MODEL_CACHE_DIR overrides it", () => {
    const cache = (env: Record<string, string>) => load(env).modelCacheDir;
    expect(cache({ XDG_CACHE_HOME: "/xdg" })).toBe("/xdg/huggingface/hub");
    expect(cache({ XDG_CACHE_HOME: "/xdg", HF_HOME: "/hf" })).toBe("/hf/hub");
    expect(cache({ HF_HOME: "/hf", HF_HUB_CACHE: "/hub-cache" })).toBe("/hub-cache");
    expect(cache({ HF_HUB_CACHE: "/hub-cache", MODEL_CACHE_DIR: "models" })).toBe(path.resolve("models"));
    expect(load({ HF_HUB_OFFLINE: "1", MODEL_REVISION: "refs/pr/12", MODEL_VARIANT: "bf16" })).toMatchObject({
      hfHubOffline: true,
      modelRevision: "refs/pr/12",
      modelVariant: "bf16",
    });
  });

  it.each([
    ["LOG_LEVEL", "loud", 'LOG_LEVEL must be one of fatal|error|warn|info|debug|trace|silent (got "loud")'],
    ["LOG_PRETTY", "maybe", 'LOG_PRETTY must be true or false (unset: pretty on a terminal) (got "maybe")'],
    ["REDIS_URL", "localhost:6379", "REDIS_URL must be a redis:// or rediss:// URL"],
    ["HF_ENDPOINT", "ftp://hub", 'HF_ENDPOINT must be an http(s) URL (got "ftp://hub")'],
    [
      "MODEL_REVISION",
      "../../etc",
      'MODEL_REVISION must be a branch, tag or commit sha of the model\'s repository (got "../../etc")',
    ],
    [
      "MODEL_VARIANT",
      "fp-16",
      'MODEL_VARIANT must be auto, none, or a weight variant such as fp16 or bf16 (got "fp-16")',
    ],
    ["HF_HUB_OFFLINE", "maybe", 'HF_HUB_OFFLINE must be 1/true/yes/on or 0/false/no/off (got "maybe")'],
    [
      "HTTPS_PROXY",
      "socks5://user:pw@proxy:1080",
      'HTTPS_PROXY must be an http(s) URL of a proxy (got "socks5://user:[redacted]@proxy:1080")',
    ],
    ["ENGINE_DEVICE", "tpu", 'ENGINE_DEVICE must be auto|cuda|webgpu|cpu (got "tpu")'],
    ["ENGINE_DTYPE", "bf16", 'ENGINE_DTYPE must be auto|fp32|fp16 (got "bf16")'],
    ["ENGINE_TRAIN_DTYPE", "FP16", 'ENGINE_TRAIN_DTYPE must be auto|fp32|fp16 (got "FP16")'],
    [
      "ENGINE_CUDA_OPTIONS",
      "prefer_nhwc",
      'ENGINE_CUDA_OPTIONS must be comma-separated CUDA provider options "key=value,…" (e.g. prefer_nhwc=1) (got "prefer_nhwc")',
    ],
    [
      "ENGINE_LOCK_SECONDS",
      "2",
      'ENGINE_LOCK_SECONDS must be a whole number of seconds ≥ 5; unset: 120 on a GPU, 900 on the CPU (got "2")',
    ],
    ["ENGINE_HTTP_PORT", "70000", 'ENGINE_HTTP_PORT must be a TCP port 0-65535 (0 disables) (got "70000")'],
    ["ENGINE_HTTP_PORT", "-1", 'ENGINE_HTTP_PORT must be a TCP port 0-65535 (0 disables) (got "-1")'],
    [
      "DISCORD_APPLICATION_ID",
      "12ab",
      "DISCORD_APPLICATION_ID must be a Discord application id (17-20 digits)",
    ],
    ["BLOB_TTL_SECONDS", "1.5", 'BLOB_TTL_SECONDS must be a whole number of seconds ≥ 1 (got "1.5")'],
    ["BLOB_MAX_BYTES", "20MB", "BLOB_MAX_BYTES must be a size in bytes ≥ 1"],
    ["BLOB_MAX_BYTES", "0", "BLOB_MAX_BYTES must be a size in bytes ≥ 1"],
    ["USER_MAX_ACTIVE_JOBS", "0", 'USER_MAX_ACTIVE_JOBS must be a whole number ≥ 1 (got "0")'],
  ])("rejects %s=%s in one line naming it", (name, value, expected) => {
    const error = errorOf({ [name]: value });
    expect(error).toBeInstanceOf(UserFacingError);
    expect(error.message.startsWith(`Invalid configuration: ${expected}`)).toBe(true);
    expect(error.message).not.toContain("\n");
  });

  it("reports every bad setting in the same line", () => {
    expect(errorOf({ ENGINE_DEVICE: "tpu", USER_MAX_QUEUED_JOBS: "many" }).message).toBe(
      'Invalid configuration: ENGINE_DEVICE must be auto|cuda|webgpu|cpu (got "tpu"); ' +
        'USER_MAX_QUEUED_JOBS must be a whole number ≥ 1 (got "many")',
    );
  });

  it("never puts a secret or a Redis password into an error", () => {
    const message = errorOf({
      SLACK_SIGNING_SECRET: "s3cret with spaces",
      REDIS_URL: "http://:hunter2@redis:6379",
    }).message;
    expect(message).toContain("SLACK_SIGNING_SECRET must be the Slack app's signing secret");
    expect(message).not.toContain("s3cret");
    expect(message).not.toContain("hunter2");
  });

  it("reads .env under the environment, which wins", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "config-test-"));
    try {
      const file = path.join(dir, ".env");
      writeFileSync(file, "ENGINE_DEVICE=cpu\nUSER_MAX_ACTIVE_JOBS=7\n# comment\nDISCORD_TOKEN=from-file\n");
      const config = loadConfig({ USER_MAX_ACTIVE_JOBS: "3" }, { envFile: file, isTTY: false });
      expect(config.engineDevice).toBe("cpu");
      expect(config.userMaxActiveJobs).toBe(3);
      expect(config.discordToken?.reveal()).toBe("from-file");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("defaults LOG_PRETTY to whether stderr is a terminal", () => {
    expect(loadConfig({}, { envFile: false, isTTY: true }).logPretty).toBe(true);
    expect(loadConfig({ LOG_PRETTY: "false" }, { envFile: false, isTTY: true }).logPretty).toBe(false);
  });
});

describe("secrets", () => {
  const env = {
    HF_TOKEN: "hf_tokenvalue",
    DISCORD_TOKEN: "discord.token.value",
    SLACK_BOT_TOKEN: "xoxb-slack-bot",
    SLACK_SIGNING_SECRET: "signingsecretvalue",
    SLACK_APP_TOKEN: "xapp-slack-app",
    REDIS_URL: "redis://user:redispassword@redis:6379",
    HTTPS_PROXY: "http://user:proxypassword@proxy:3128",
  };
  const values = [
    "hf_tokenvalue",
    "discord.token.value",
    "xoxb-slack-bot",
    "signingsecretvalue",
    "xapp-slack-app",
  ];

  it("are hidden from inspect, String, JSON and redactedConfig, and revealed on request", () => {
    const config = load(env);
    const shown = [
      inspect(config, { depth: 5 }),
      JSON.stringify(config),
      `${config.discordToken}`,
      JSON.stringify(redactedConfig(config)),
    ].join("\n");
    for (const value of values) expect(shown).not.toContain(value);
    expect(JSON.stringify(redactedConfig(config))).not.toContain("redispassword");
    expect(JSON.stringify(redactedConfig(config))).not.toContain("proxypassword");
    expect(redactedConfig(config)).toMatchObject({
      discordToken: "[redacted]",
      redisUrl: "redis://user:[redacted]@redis:6379",
      httpsProxy: "http://user:[redacted]@proxy:3128/",
    });
    expect(config.slackAppToken).toBeInstanceOf(Secret);
    expect(config.slackAppToken?.reveal()).toBe("xapp-slack-app");
  });

  it("requireSetting names the missing variable and what needs it", () => {
    const config = load({});
    expect(() => requireSetting(config, "discordToken", "bot run")).toThrow(
      new ConfigError("DISCORD_TOKEN is required for bot run: set it in the environment or .env"),
    );
    expect(requireSetting(load(env), "slackBotToken", "bot run").reveal()).toBe("xoxb-slack-bot");
  });
});

describe("settings documentation", () => {
  it("documents every setting, and its values load", () => {
    const text = readFileSync(".env.example", "utf8");
    const documented = [...text.matchAll(/^#? ?([A-Z][A-Z0-9_]+)=/gm)].map((match) => match[1]);
    expect([...new Set(documented)].sort()).toEqual([...SETTING_NAMES].sort());
    expect(loadConfig({}, { envFile: ".env.example" }).blobMaxBytes).toBe(20 * 1024 * 1024);
  });

  it("has a row for every setting in the README's table", () => {
    const readme = readFileSync("README.md", "utf8");
    const missing = SETTING_NAMES.filter((name) => !readme.includes(`| \`${name}\` |`));
    expect(missing).toEqual([]);
  });
});
