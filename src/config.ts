import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import { parse as parseDotenv } from "dotenv";
import { z } from "zod";
import { parseCudaOptions } from "./engine/runtime/cuda-options.js";
import { ConfigError } from "./errors.js";

/**
 * A secret setting (token, signing secret). Printing, logging or JSON-serializing it shows
 * "[redacted]"; only reveal() gives the value, at the one place that hands it to a client library.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return "[redacted]";
  }
  toJSON(): string {
    return "[redacted]";
  }
  [inspect.custom](): string {
    return "[redacted]";
  }
}

/** The tiny fixture checkpoint used when MODEL is unset (src/ and dist/ are both one level down). */
export const FIXTURE_MODEL = fileURLToPath(new URL("../test/fixtures/models/sd1/model", import.meta.url));

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d+$/).transform(Number).pipe(z.number().int().min(min).max(max));

const httpUrl = z.url({ protocol: /^https?$/ });
const secret = z
  .string()
  .regex(/^\S+$/)
  .transform((value) => new Secret(value));
/** A token whose kind shows in its prefix ("xoxb-", "xapp-"): swapped tokens are caught at start-up. */
const prefixedSecret = (prefix: string) =>
  z
    .string()
    .regex(new RegExp(`^${prefix}\\S+$`))
    .transform((value) => new Secret(value));
const snowflake = z.string().regex(/^\d{17,20}$/);
/** A branch, tag or commit of a hub repository (a path under refs/ in the cache: no "..", no leading "/"). */
const revision = z
  .string()
  .regex(/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/)
  .refine((value) => !value.split("/").includes(".."));

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };
/** A byte count: "20971520", "512KiB", "20MiB", "1GiB". */
const bytes = z
  .string()
  .regex(/^\d+\s*(B|KiB|MiB|GiB)?$/i)
  .transform((value) => {
    const [, digits = "", unit = ""] = /^(\d+)\s*([a-z]*)$/i.exec(value) ?? [];
    return Number(digits) * (SIZE_UNITS[unit.toLowerCase()] ?? 1);
  })
  .pipe(z.number().int().min(1));

type Setting = { schema: z.ZodType; expects: string; secret?: true };

/**
 * Every setting, by its environment variable. `expects` completes "X must be …" in the error line.
 * Defaults that depend on other settings (LOG_PRETTY, MODEL, MODEL_CACHE_DIR) are filled in
 * loadConfig(). Owners add theirs here; `Config` gets the camelCase key automatically.
 */
const SETTINGS = {
  LOG_LEVEL: { schema: z.enum(LOG_LEVELS).default("info"), expects: `one of ${LOG_LEVELS.join("|")}` },
  LOG_PRETTY: { schema: z.stringbool().optional(), expects: "true or false (unset: pretty on a terminal)" },
  STATE_DIR: { schema: z.string().default("./.state"), expects: "a directory path" },
  REDIS_URL: {
    schema: z.url({ protocol: /^rediss?$/ }).optional(),
    expects: "a redis:// or rediss:// URL (unset: start an embedded redis-server)",
  },
  MODEL: {
    schema: z.string().optional(),
    expects:
      "a diffusers model folder, a Hugging Face hub id, a single-file .safetensors/.ckpt checkpoint, or a hub file (its huggingface.co URL or owner/name/file.safetensors)",
  },
  MODEL_CONFIG: {
    schema: z.string().optional(),
    expects: "a diffusers model folder or hub id whose configs and tokenizer a single-file MODEL uses",
  },
  MODEL_PREDICTION_TYPE: {
    schema: z.enum(["auto", "epsilon", "v_prediction"]).default("auto"),
    expects: "auto (the scheduler config's), epsilon or v_prediction",
  },
  MODEL_REVISION: {
    schema: revision.default("main"),
    expects: "a branch, tag or commit sha of the model's repository",
  },
  MODEL_VARIANT: {
    schema: z
      .string()
      .regex(/^[A-Za-z0-9_]+$/)
      .default("auto"),
    expects: "auto, none, or a weight variant such as fp16 or bf16",
  },
  MODEL_CACHE_DIR: { schema: z.string().optional(), expects: "a directory path" },
  HF_HUB_CACHE: { schema: z.string().optional(), expects: "a directory path" },
  HF_HOME: { schema: z.string().optional(), expects: "a directory path" },
  XDG_CACHE_HOME: { schema: z.string().optional(), expects: "a directory path" },
  HF_HUB_OFFLINE: { schema: z.stringbool().default(false), expects: "1/true/yes/on or 0/false/no/off" },
  HF_ENDPOINT: { schema: httpUrl.default("https://huggingface.co"), expects: "an http(s) URL" },
  HF_TOKEN: { schema: secret.optional(), expects: "a Hugging Face access token", secret: true },
  HTTPS_PROXY: { schema: httpUrl.optional(), expects: "an http(s) URL of a proxy" },
  HTTP_PROXY: { schema: httpUrl.optional(), expects: "an http(s) URL of a proxy" },
  NO_PROXY: {
    schema: z.string().optional(),
    expects: "comma-separated host names reached without the proxy",
  },
  ENGINE_DEVICE: {
    schema: z.enum(["auto", "cuda", "webgpu", "cpu"]).default("auto"),
    expects: "auto|cuda|webgpu|cpu",
  },
  ENGINE_DTYPE: { schema: z.enum(["auto", "fp32", "fp16"]).default("auto"), expects: "auto|fp32|fp16" },
  /**
   * The training graphs' compute dtype (mixed precision: loss and gradients stay fp32). auto: fp16 on the
   * CUDA provider, where it was measured faster and smaller (Imagic balanced on the H200: first grid 80.4 s
   * vs 93.9 s in fp32, and the whole job fits a 16 GiB card only with it; docs/PERFORMANCE.md); fp32 on the
   * CPU, which has no fp16 arithmetic (2.4× slower, docs/IMAGIC.md), and on WebGPU, where it saved no
   * memory and 4 % of the time in its one run (docs/PERFORMANCE.md, Imagic on WebGPU).
   */
  ENGINE_TRAIN_DTYPE: { schema: z.enum(["auto", "fp32", "fp16"]).default("auto"), expects: "auto|fp32|fp16" },
  /**
   * Imagic's training sessions: `shared` (one compiled graph for both stages, with the gradients of both,
   * so the device holds one training session: what a 16 GB card needs) or `per-stage` (stage 1 on a
   * context-only graph, stage 2 on a LoRA-only one: each computes only its own gradients, at the memory of a
   * second session; on the H200 with CUDA graphs Imagic `balanced` took 63.6 s instead of 77.6 s,
   * docs/PERFORMANCE.md).
   */
  ENGINE_TRAINING_SESSIONS: {
    schema: z.enum(["shared", "per-stage"]).default("shared"),
    expects: "shared|per-stage",
  },
  /**
   * The CUDA provider's options over the engine's defaults (CUDA_OPTION_DEFAULTS in
   * src/engine/runtime/cuda-options.ts), e.g. "prefer_nhwc=1,cudnn_conv_algo_search=HEURISTIC"; set
   * through the add-on `setup cuda` builds (onnxruntime-node passes the provider only a device id).
   */
  ENGINE_CUDA_OPTIONS: {
    schema: z
      .string()
      .transform((value, ctx) => {
        const options = parseCudaOptions(value);
        if (typeof options !== "string") return options;
        ctx.addIssue({ code: "custom", message: options });
        return z.NEVER;
      })
      .default({}),
    expects: 'comma-separated CUDA provider options "key=value,…" (e.g. prefer_nhwc=1)',
  },
  ENGINE_HTTP_PORT: { schema: int(0, 65535).default(9464), expects: "a TCP port 0-65535 (0 disables)" },
  ENGINE_LOCK_SECONDS: {
    schema: int(5).optional(),
    expects: "a whole number of seconds ≥ 5; unset: 120 on a GPU, 900 on the CPU",
  },
  ENGINE_MAX_TRAIN_BYTES: {
    schema: bytes.optional(),
    expects:
      'a size in bytes ≥ 1, optionally with a unit ("24GiB"); unset: 24 GiB on a GPU, 75 % of RAM on the CPU',
  },
  DISCORD_TOKEN: {
    schema: secret.optional(),
    expects: "the bot token from the Discord developer portal",
    secret: true,
  },
  DISCORD_APPLICATION_ID: {
    schema: snowflake.optional(),
    expects: "a Discord application id (17-20 digits)",
  },
  DISCORD_GUILD_ID: { schema: snowflake.optional(), expects: "a Discord server (guild) id (17-20 digits)" },
  DISCORD_API_URL: { schema: httpUrl.optional(), expects: "an http(s) URL of the Discord REST API" },
  SLACK_BOT_TOKEN: {
    schema: prefixedSecret("xoxb-").optional(),
    expects: "the Slack bot token (xoxb-…)",
    secret: true,
  },
  SLACK_SIGNING_SECRET: {
    schema: secret.optional(),
    expects: "the Slack app's signing secret",
    secret: true,
  },
  SLACK_APP_TOKEN: {
    schema: prefixedSecret("xapp-").optional(),
    expects: "the Slack app-level token (xapp-…), for Socket Mode",
    secret: true,
  },
  SLACK_MODE: {
    schema: z.enum(["socket", "http"]).default("socket"),
    expects: "socket (Socket Mode, no public URL) or http (Slack posts to SLACK_HTTP_PORT)",
  },
  SLACK_HTTP_PORT: {
    schema: int(1, 65535).default(3000),
    expects: "a TCP port 1-65535 (SLACK_MODE=http: the request URL's port)",
  },
  SLACK_API_URL: { schema: httpUrl.optional(), expects: "an http(s) URL of the Slack Web API" },
  BLOB_TTL_SECONDS: { schema: int(1).default(86400), expects: "a whole number of seconds ≥ 1" },
  BLOB_MAX_BYTES: {
    schema: bytes.default(20 * 1024 ** 2),
    expects: 'a size in bytes ≥ 1, optionally with a unit ("20MiB", "512KiB")',
  },
  USER_MAX_ACTIVE_JOBS: { schema: int(1).default(2), expects: "a whole number ≥ 1" },
  USER_MAX_QUEUED_JOBS: { schema: int(1).default(5), expects: "a whole number ≥ 1" },
} satisfies Record<string, Setting>;

type Settings = typeof SETTINGS;
export type SettingName = keyof Settings;
/** Every environment variable the config reads (.env.example documents each). */
export const SETTING_NAMES = Object.keys(SETTINGS) as SettingName[];

type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Lowercase<Head>}${Capitalize<CamelCase<Tail>>}`
  : Lowercase<S>;

type Parsed = { [K in SettingName as CamelCase<K>]: z.output<Settings[K]["schema"]> };

export type Config = Omit<Parsed, "logPretty" | "model" | "modelCacheDir" | "stateDir"> & {
  logPretty: boolean;
  /** Absolute path. */
  stateDir: string;
  model: string;
  /** True when MODEL was unset and `model` is the tiny test fixture: say so loudly. */
  modelIsFixture: boolean;
  /**
   * The Hugging Face hub cache, absolute: MODEL_CACHE_DIR, else HF_HUB_CACHE, else HF_HOME/hub, else
   * XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub — where huggingface_hub and diffusers
   * look, so that a model either downloaded is found.
   */
  modelCacheDir: string;
};

function camelCase(name: string): string {
  return name.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Environment variable name for a Config key, for messages ("DISCORD_TOKEN is required for …"). */
function envName(key: keyof Config): string {
  return SETTING_NAMES.find((name) => camelCase(name) === key) ?? key;
}

/** Settings whose URL may carry a password (`redis://:pw@host`, `http://user:pw@proxy:3128`): masked wherever shown. */
const URLS_WITH_PASSWORDS: SettingName[] = ["REDIS_URL", "HTTPS_PROXY", "HTTP_PROXY"];

function describeValue(name: SettingName, raw: string): string {
  if ((SETTINGS[name] as Setting).secret) return "";
  const value = URLS_WITH_PASSWORDS.includes(name) ? redactUrl(raw) : raw;
  const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
  return ` (got "${shown}")`;
}

export interface LoadOptions {
  /** A dotenv file merged under `env` (env wins). Default: `.env` in the working directory, only when
   *  `env` is process.env, so that tests passing their own env are not affected by a developer's file. */
  envFile?: string | false;
  /** Whether stderr is a terminal (decides LOG_PRETTY's default). */
  isTTY?: boolean;
}

/**
 * Reads and validates every setting. Throws ConfigError with one line naming each bad variable and
 * what it expects; a secret's value never appears in that line.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, options: LoadOptions = {}): Config {
  const envFile = options.envFile ?? (env === process.env ? ".env" : false);
  const fromFile = envFile && existsSync(envFile) ? parseDotenv(readFileSync(envFile)) : {};

  const raw: Record<string, unknown> = {};
  const problems: string[] = [];
  const parsed: Record<string, unknown> = {};
  for (const name of SETTING_NAMES) {
    // An empty value (`DISCORD_TOKEN=` in .env) means unset.
    const value = env[name] ?? fromFile[name];
    raw[name] = value === "" ? undefined : value;
    const result = (SETTINGS[name] as Setting).schema.safeParse(raw[name]);
    if (result.success) parsed[camelCase(name)] = result.data;
    else problems.push(`${name} must be ${SETTINGS[name].expects}${describeValue(name, String(raw[name]))}`);
  }
  if (problems.length > 0) throw new ConfigError(`Invalid configuration: ${problems.join("; ")}`);

  const p = parsed as Parsed;
  const stateDir = path.resolve(p.stateDir);
  return {
    ...p,
    logPretty: p.logPretty ?? options.isTTY ?? process.stderr.isTTY === true,
    stateDir,
    model: p.model ?? FIXTURE_MODEL,
    modelIsFixture: p.model === undefined,
    modelCacheDir: path.resolve(
      p.modelCacheDir ??
        p.hfHubCache ??
        path.join(
          p.hfHome ?? path.join(p.xdgCacheHome ?? path.join(homedir(), ".cache"), "huggingface"),
          "hub",
        ),
    ),
  };
}

let cached: Config | undefined;
/** The process's configuration, validated on first use (the CLI does that before any action). */
export function appConfig(): Config {
  cached ??= loadConfig();
  return cached;
}

/**
 * Returns a setting that a command cannot run without, or throws ConfigError naming the variable:
 * `requireSetting(config, "discordToken", "bot run")`.
 */
export function requireSetting<K extends keyof Config>(
  config: Config,
  key: K,
  purpose: string,
): NonNullable<Config[K]> {
  const value = config[key];
  if (value === undefined || value === null) {
    throw new ConfigError(`${envName(key)} is required for ${purpose}: set it in the environment or .env`);
  }
  return value as NonNullable<Config[K]>;
}

/** Hides a password in a URL (redis://:pw@host → redis://:[redacted]@host). */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "[redacted]";
    return parsed.toString().replace("%5Bredacted%5D", "[redacted]");
  } catch {
    return url;
  }
}

/** The config as a plain object safe to print or log: secrets "[redacted]", URL passwords hidden. */
export function redactedConfig(config: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    if (value instanceof Secret) out[key] = "[redacted]";
    else if (URLS_WITH_PASSWORDS.some((name) => camelCase(name) === key) && typeof value === "string")
      out[key] = redactUrl(value);
    else out[key] = value;
  }
  return out;
}
