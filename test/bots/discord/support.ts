// One world for the Discord tests: a fake Discord, a private Redis with the real queue and engine
// worker (pipelines chosen per test), and the real bot (discord.js) between them.
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { type DiscordBot, startDiscordBot } from "../../../src/bots/discord/bot.js";
import {
  type CommandOption,
  type FakeAttachment,
  type FakeChannel,
  FakeDiscord,
  type FakeDiscordOptions,
  type FakeInteraction,
  type FakeMessage,
  type FakeUser,
} from "../../../src/bots/discord/fake/server.js";
import type { ChatLimits } from "../../../src/commands/chat.js";
import type { ChatCommandsOptions } from "../../../src/commands/service.js";
import type { QueueClient, QueueClientOptions } from "../../../src/queue/client.js";
import type { PipelineRegistry, StartWorkerOptions } from "../../../src/queue/worker.js";
import { type Harness, harness } from "../../queue/support/setup.js";
import { startBotProcess } from "../support/bot-process.js";

export const PHOTO = readFileSync(new URL("../../fixtures/images/chelsea.png", import.meta.url));

export interface World {
  fake: FakeDiscord;
  h: Harness;
  bot: DiscordBot;
  queue: QueueClient;
  author: FakeUser;
  other: FakeUser;
  startBot(): Promise<DiscordBot>;
  /** One more bot process on this world's fake and Redis, with its own queue client. */
  connectBot(queue: QueueClient): Promise<DiscordBot>;
  stopBot(): Promise<void>;
  worker(
    pipelines: PipelineRegistry,
    options?: Partial<Omit<StartWorkerOptions, "pipelines">>,
  ): Promise<void>;
  photo(name?: string): FakeAttachment;
  /** Runs /imagic as `user` (default: the author) with a prompt, `image` (default: a photo) and more options. */
  imagic(
    channel: FakeChannel,
    options?: CommandOption[],
    image?: FakeAttachment,
    user?: FakeUser,
  ): FakeInteraction;
  /** Runs /swap as the author: `source` (default a photo), subject "cat", and `references` in order. */
  swap(
    channel: FakeChannel,
    references: FakeAttachment[],
    options?: CommandOption[],
    source?: FakeAttachment,
  ): FakeInteraction;
  /** The thread the bot opened on an interaction's answer. */
  thread(interaction: FakeInteraction): Promise<string>;
  /** The bot's messages in a channel or thread, oldest first. */
  posted(channelId: string): FakeMessage[];
  /** Waits for the first bot message in a channel whose text starts with `prefix` (a status emoji…). */
  postedStartingWith(channelId: string, prefix: string): Promise<FakeMessage>;
  /** Waits for the n-th (1-based) bot message in a channel that offers picks, with all `choices` reactions. */
  offer(channelId: string, n: number, choices: number): Promise<FakeMessage>;
  /** Ephemeral text the bot answered an interaction with. */
  ephemeral(interaction: FakeInteraction): Promise<string>;
  close(): Promise<void>;
}

export interface WorldOptions {
  fake?: FakeDiscordOptions;
  limits?: Partial<ChatLimits>;
  commands?: ChatCommandsOptions["imagicDefaults"];
  positionRefreshMs?: number;
  progressLeaseMs?: number;
  /** How long to wait for each thing the bot should do (default 30 s). */
  timeoutMs?: number;
  /** How long the bot gives an attachment's download (the bot's default: a minute). */
  downloadTimeoutMs?: number;
  /** The bot's result deliveries: their lease (how often it sweeps) and when a failed one is tried again. */
  delivery?: Pick<QueueClientOptions, "deliveryLeaseMs" | "deliveryRetry">;
}

export async function world(options: WorldOptions = {}): Promise<World> {
  const fake = await FakeDiscord.start(options.fake);
  const h = await harness({ ttlSeconds: 3600, maxBytes: 12 * 1024 * 1024, userQuotaBytes: 64 * 1024 * 1024 });
  let bot: DiscordBot | undefined;
  let queue: QueueClient | undefined;

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
        consumer: "discord",
        platform: "discord",
        limits: { maxQueued: 5 },
        ...options.delivery,
      });
      bot = await w.connectBot(queue);
      return bot;
    },
    connectBot(client) {
      return startDiscordBot({
        token: fake.token,
        apiUrl: fake.apiUrl,
        queue: client,
        blobs: h.blobs,
        redis: h.redis.client(),
        limits: { minEditIntervalMs: 500, ...options.limits },
        ...(options.downloadTimeoutMs ? { downloadTimeoutMs: options.downloadTimeoutMs } : {}),
        commands: {
          imagicDefaults: options.commands,
          positionRefreshMs: options.positionRefreshMs,
          progressLeaseMs: options.progressLeaseMs,
        },
      });
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
    photo(name = "chelsea.png") {
      return fake.attachment(name, PHOTO, "image/png");
    },
    imagic(channel, extra = [], image = w.photo(), user = w.author) {
      return fake.runCommand({
        name: "imagic",
        user,
        channel,
        options: [
          opt.attachment("image", image),
          opt.string("prompt", "a photo of a sleeping cat"),
          ...extra,
        ],
        attachments: [image],
      });
    },
    swap(channel, references, options = [], source = w.photo()) {
      return fake.runCommand({
        name: "swap",
        user: w.author,
        channel,
        options: [
          opt.attachment("source", source),
          opt.string("subject", "cat"),
          ...references.map((ref, i) => opt.attachment(`reference${i + 1}`, ref)),
          ...options,
        ],
        attachments: [source, ...references],
      });
    },
    async thread(interaction) {
      const original = await fake.waitFor("the public answer", () => interaction.originalId);
      return fake.waitFor("a thread on the answer", () => fake.messages.get(original)?.threadId);
    },
    posted(channelId) {
      return fake.messagesIn(channelId).filter((m) => m.author.id === fake.botUser.id);
    },
    postedStartingWith(channelId, prefix) {
      return fake.waitFor(`a message starting with ${prefix} in ${channelId}`, () =>
        w.posted(channelId).find((m) => m.content.startsWith(prefix)),
      );
    },
    async offer(channelId, n, choices) {
      const offer = await fake.waitFor(
        `pick offer ${n} in ${channelId}`,
        () => w.posted(channelId).filter((m) => m.reactions.size > 0)[n - 1],
        options.timeoutMs,
      );
      await fake.waitFor(`${choices} reactions on offer ${n}`, () => offer.reactions.size >= choices);
      return offer;
    },
    async ephemeral(interaction) {
      return fake.waitFor("an ephemeral answer", () => {
        const ids = [interaction.originalId, ...interaction.followUps].filter(
          (id): id is string => id !== undefined,
        );
        const message = ids
          .map((id) => fake.messages.get(id))
          .find((m) => m && (m.flags & 64) !== 0 && m.content);
        return message?.content;
      });
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
 * A bot in its own process (test/bots/support/bot-child.ts) on this world's fake and Redis, with 1 s
 * leases, for the tests that SIGKILL it (killBotProcess).
 */
export function startDiscordBotProcess(w: World): Promise<ChildProcess> {
  return startBotProcess({
    PLATFORM: "discord",
    REDIS_URL: w.h.redis.url,
    API_URL: w.fake.apiUrl,
    BOT_TOKEN: w.fake.token,
    DELIVERY_LEASE_MS: "1000",
  });
}

/** Option shapes as Discord sends them (type numbers of ApplicationCommandOptionType). */
export const opt = {
  string: (name: string, value: string): CommandOption => ({ name, type: 3, value }),
  integer: (name: string, value: number): CommandOption => ({ name, type: 4, value }),
  number: (name: string, value: number): CommandOption => ({ name, type: 10, value }),
  attachment: (name: string, a: FakeAttachment): CommandOption => ({ name, type: 11, value: a.id }),
};
