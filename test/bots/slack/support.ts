// One world for the Slack tests: a fake Slack, a private Redis with the real queue and engine worker
// (pipelines chosen per test), and the real bot (Bolt + the WebClient) between them, in Socket Mode or
// HTTP mode.
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { type SlackBot, startSlackBot } from "../../../src/bots/slack/bot.js";
import type { ChatLimits } from "../../../src/commands/chat.js";
import type { ChatCommandsOptions } from "../../../src/commands/service.js";
import type { QueueClient, QueueClientOptions } from "../../../src/queue/client.js";
import type { PipelineRegistry, StartWorkerOptions } from "../../../src/queue/worker.js";
import { freePort, type Harness, harness } from "../../queue/support/setup.js";
import { startBotProcess } from "../support/bot-process.js";
import type { Delivery } from "./fake/delivery.js";
import {
  type FakeChannel,
  type FakeFile,
  type FakeMessage,
  FakeSlack,
  type FakeSlackOptions,
  type FakeUser,
  type FakeView,
  type FormValues,
} from "./fake/server.js";

export const PHOTO = readFileSync(new URL("../../fixtures/images/chelsea.png", import.meta.url));

/** One edit a user started: the form, its submission and where the bot answered. */
export interface Started {
  view: FakeView;
  submission: Delivery;
  channel: FakeChannel;
}

export interface World {
  fake: FakeSlack;
  h: Harness;
  bot: SlackBot;
  queue: QueueClient;
  author: FakeUser;
  other: FakeUser;
  startBot(): Promise<SlackBot>;
  stopBot(): Promise<void>;
  worker(
    pipelines: PipelineRegistry,
    options?: Partial<Omit<StartWorkerOptions, "pipelines">>,
  ): Promise<void>;
  /** A channel the author, the other user and the bot are in. */
  channel(name: string, options?: { bot?: boolean; restricted?: boolean }): FakeChannel;
  /** The author's upload of a photo (the sample photo unless `bytes`). */
  photo(name?: string, bytes?: Uint8Array, declared?: { mimetype?: string; size?: number }): FakeFile;
  /** Runs `/command text` as the author and returns the form the bot opened. */
  form(channel: FakeChannel, command: string, text?: string): Promise<FakeView>;
  /** /imagic as the author: the form filled with a photo and a prompt (and `values`), submitted. */
  imagic(channel: FakeChannel, values?: FormValues): Promise<Started>;
  /** /swap as the author: a photo as the source, subject "cat" and `references`, submitted. */
  swap(channel: FakeChannel, references: FakeFile[], values?: FormValues): Promise<Started>;
  /** The thread of the bot's answer to a submission (the answer's ts). */
  thread(started: Started): Promise<string>;
  /** The bot's messages in a thread, oldest first. */
  posted(channel: FakeChannel, thread: string): FakeMessage[];
  /** Waits for the first bot message in a thread whose text starts with `prefix`. */
  postedStartingWith(channel: FakeChannel, thread: string, prefix: string): Promise<FakeMessage>;
  /** Waits for the n-th (1-based) message in a thread that offers picks, with all `choices` reactions. */
  offer(channel: FakeChannel, thread: string, n: number, choices: number): Promise<FakeMessage>;
  /** Waits for the next ephemeral message to `user` after `since` (ms since the epoch). */
  ephemeral(user: FakeUser, since: number): Promise<string>;
  close(): Promise<void>;
}

export interface WorldOptions {
  fake?: FakeSlackOptions;
  mode?: "socket" | "http";
  limits?: Partial<ChatLimits>;
  commands?: ChatCommandsOptions["imagicDefaults"];
  positionRefreshMs?: number;
  /** How long to wait for each thing the bot should do (default 30 s). */
  timeoutMs?: number;
  /** The bot's result deliveries: their lease (how often it sweeps) and when a failed one is tried again. */
  delivery?: Pick<QueueClientOptions, "deliveryLeaseMs" | "deliveryRetry">;
}

export async function world(options: WorldOptions = {}): Promise<World> {
  const fake = await FakeSlack.start(options.fake);
  const h = await harness({ ttlSeconds: 3600, maxBytes: 12 * 1024 * 1024, userQuotaBytes: 64 * 1024 * 1024 });
  const port = options.mode === "http" ? await freePort() : 0;
  if (options.mode === "http") fake.useHttp(`http://127.0.0.1:${port}/slack/events`);
  let bot: SlackBot | undefined;
  let queue: QueueClient | undefined;
  const timeout = options.timeoutMs;

  const answerTo = async (started: Started) =>
    fake.waitFor(
      "the bot's answer in the channel",
      () =>
        fake
          .posted(started.channel.id)
          .find((m) => m.history[0] && m.history[0].at >= started.submission.sentAt),
      timeout,
    );

  const w: World = {
    fake,
    h,
    author: fake.user("ann"),
    other: fake.user("bob"),
    get bot() {
      if (!bot) throw new Error("bot not started");
      return bot;
    },
    get queue() {
      if (!queue) throw new Error("bot not started");
      return queue;
    },
    async startBot() {
      queue = await h.client({
        consumer: "slack",
        platform: "slack",
        limits: { maxQueued: 5 },
        ...options.delivery,
      });
      bot = await startSlackBot({
        botToken: fake.botToken,
        connection:
          options.mode === "http"
            ? { mode: "http", signingSecret: fake.signingSecret, port }
            : { mode: "socket", appToken: fake.appToken },
        apiUrl: fake.apiUrl,
        queue,
        blobs: h.blobs,
        redis: h.redis.client(),
        limits: { minEditIntervalMs: 1000, ...options.limits },
        commands: { imagicDefaults: options.commands, positionRefreshMs: options.positionRefreshMs },
      });
      return bot;
    },
    async stopBot() {
      await bot?.stop();
      await queue?.close();
      bot = undefined;
      queue = undefined;
    },
    async worker(pipelines, workerOptions = {}) {
      await h.worker({ previewIntervalMs: 60_000, ...workerOptions, pipelines });
    },
    channel(name, channelOptions = {}) {
      return fake.channel(name, [w.author, w.other], channelOptions);
    },
    photo(name = "chelsea.png", bytes = PHOTO, declared = {}) {
      return fake.upload(w.author, name, bytes, declared);
    },
    async form(channel, command, text = "") {
      const { trigger } = fake.command(w.author, channel, command, text);
      return fake.viewFor(trigger);
    },
    async imagic(channel, values = {}) {
      const view = await w.form(channel, "/imagic");
      const submission = fake.submit(view, w.author, {
        image: [w.photo()],
        prompt: "a photo of a sleeping cat",
        ...values,
      });
      return { view, submission, channel };
    },
    async swap(channel, references, values = {}) {
      const view = await w.form(channel, "/swap");
      const submission = fake.submit(view, w.author, {
        source: [w.photo()],
        subject: "cat",
        reference: references,
        ...values,
      });
      return { view, submission, channel };
    },
    async thread(started) {
      return (await answerTo(started)).ts;
    },
    posted(channel, thread) {
      return fake.posted(channel.id, thread);
    },
    postedStartingWith(channel, thread, prefix) {
      return fake.waitFor(
        `a message starting with ${prefix}`,
        () => w.posted(channel, thread).find((m) => m.text.startsWith(prefix)),
        timeout,
      );
    },
    async offer(channel, thread, n, choices) {
      const offer = await fake.waitFor(
        `pick offer ${n} in ${thread}`,
        () => w.posted(channel, thread).filter((m) => m.reactions.size > 0)[n - 1],
        timeout,
      );
      await fake.waitFor(`${choices} reactions on offer ${n}`, () => offer.reactions.size >= choices);
      return offer;
    },
    async ephemeral(user, since) {
      const message = await fake.waitFor("an ephemeral message", () =>
        fake.ephemeralsFor(user).find((e) => e.at >= since),
      );
      return message.text;
    },
    async close() {
      await w.stopBot();
      await h.close();
      await fake.close();
    },
  };
  return w;
}

/**
 * A bot in its own process (test/bots/support/bot-child.ts) on this world's fake and Redis, in Socket
 * Mode with 1 s leases, for the tests that SIGKILL it (killBotProcess).
 */
export function startSlackBotProcess(w: World): Promise<ChildProcess> {
  return startBotProcess({
    PLATFORM: "slack",
    REDIS_URL: w.h.redis.url,
    API_URL: w.fake.apiUrl,
    BOT_TOKEN: w.fake.botToken,
    APP_TOKEN: w.fake.appToken,
    DELIVERY_LEASE_MS: "1000",
  });
}
