import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { ChannelType, PermissionFlagsBits } from "discord.js";
import { type WebSocket, WebSocketServer } from "ws";
import {
  type AllowedMentions,
  allowedMentionsProblem,
  NO_PINGS,
  type Pings,
  resolvePings,
} from "./mentions.js";
import { type BucketLimit, RateLimiter } from "./rate-limits.js";

/**
 * A protocol-level fake of Discord on loopback: the v10 REST routes the bot uses and a JSON gateway.
 * discord.js talks to it unmodified (Client `rest.api` → apiUrl; /gateway/bot → our ws URL). It enforces
 * what Discord enforces — rate limits with 429s, the 3-second interaction window, 2,000-character
 * content, attachment size, permissions per place (Send Messages in channels, Send Messages in Threads
 * in threads and forum posts), archived threads (50083; a post unarchives), the edit limit on messages
 * older than an hour (30046 as a 429), thread-creation limits, `allowed_mentions`, `nonce` with
 * `enforce_nonce` (a second create within the window returns the first message), several guilds spread
 * over gateway shards (4011 when one connection would carry too many) — and records what the bot did.
 * A test can stall a request (carried out or not, never answered): what a bot that dies mid-request leaves;
 * and start an outage: matching requests answered 500 and not carried out, as Discord's own failures are.
 * The bot never uses it: the tests and the chaos benchmark (src/cli/bench/chaos-run.ts) run the bot
 * against it, which is why it lives under src/ (product code may not import test code).
 */

export const ALL_BOT_PERMISSIONS =
  PermissionFlagsBits.ViewChannel |
  PermissionFlagsBits.SendMessages |
  PermissionFlagsBits.CreatePublicThreads |
  PermissionFlagsBits.SendMessagesInThreads |
  PermissionFlagsBits.AttachFiles |
  PermissionFlagsBits.AddReactions |
  PermissionFlagsBits.ReadMessageHistory;

export interface FakeUser {
  id: string;
  username: string;
  bot?: boolean;
}

export interface FakeRole {
  id: string;
  name: string;
  mentionable: boolean;
}

export interface FakeGuild {
  id: string;
  name: string;
  roles: FakeRole[];
  /**
   * Whether the bot user is a member. A guild that added the app with `applications.commands` alone
   * sends its commands' interactions, but the bot hears nothing else of it and its channel routes answer
   * Missing Access (50001).
   */
  botMember: boolean;
}

const THREAD_TYPES: readonly ChannelType[] = [
  ChannelType.PublicThread,
  ChannelType.PrivateThread,
  ChannelType.AnnouncementThread,
];

export interface FakeChannel {
  id: string;
  type: ChannelType;
  name: string;
  guildId?: string;
  parentId?: string;
  /** What the bot may do here (a permission bitfield); Discord computes it from roles and overwrites. */
  botPermissions: bigint;
  recipient?: FakeUser;
  /** Threads: archived after `autoArchiveDuration` minutes without a new message (edits do not count). */
  archived?: boolean;
  /** Threads: locked by a moderator; only Manage Threads may unarchive it (a post included). */
  locked?: boolean;
  autoArchiveDuration?: number;
  /** Threads: when the last message was posted in it. */
  lastActivity?: number;
  /** Text channels: thread creation here fails with this JSON error code (160005, 50001…). */
  refuseThreadsWith?: number;
}

export interface FakeAttachment {
  id: string;
  filename: string;
  size: number;
  content_type: string;
  url: string;
  bytes: Uint8Array;
}

export interface FakeMessage {
  id: string;
  channelId: string;
  content: string;
  author: FakeUser;
  flags: number;
  createdAt: number;
  attachments: FakeAttachment[];
  reactions: Map<string, Set<string>>;
  /** Who was notified when the message was created (edits never notify). */
  pinged: Pings;
  /** Every content/attachment state the message went through, creation first. */
  history: Array<{ at: number; content: string; attachments: string[] }>;
  threadId?: string;
  interactionId?: string;
  /** The nonce it was created with, as Discord echoes it (string or integer). */
  nonce?: string | number;
}

/** Which requests a test singles out: by route ("POST /channels/:id/messages"), path and JSON body. */
export type RequestMatch = (request: {
  route: string;
  path: string;
  json: Record<string, unknown>;
}) => boolean;

/** A request a test asked the fake to leave unanswered (see FakeDiscord.stall). */
export interface StallRule {
  /** Whether Discord carries the request out before it goes silent, or never sees it. */
  when: "before" | "after";
  match: RequestMatch;
}

export interface RecordedRequest {
  at: number;
  method: string;
  path: string;
  route: string;
  status: number;
  /** Discord's JSON error code of a refused request (50013, 30046…). */
  code?: number;
}

export interface FakeInteraction {
  id: string;
  token: string;
  user: FakeUser;
  channelId: string;
  dispatchedAt: number;
  /** When the bot acknowledged it (callback), undefined while it has not. */
  acknowledgedAt?: number;
  callbackType?: number;
  ephemeral?: boolean;
  /** The message the callback created ("@original"), once there is one. */
  originalId?: string;
  followUps: string[];
}

export interface CommandOption {
  name: string;
  type: number;
  value: string | number | boolean;
}

export interface FakeDiscordOptions {
  /** Limits per bucket kind; defaults follow Discord's published per-channel limits. */
  limits?: Partial<Record<"message" | "reaction" | "default", BucketLimit>>;
  maxFileBytes?: number;
  heartbeatIntervalMs?: number;
  interactionWindowMs?: number;
  /** How long an interaction callback takes to be answered (it counts as acknowledged on arrival). */
  callbackLatencyMs?: number;
  /** Guilds one gateway connection may carry before Discord closes it with 4011 (Discord: 2,500). */
  maxGuildsPerShard?: number;
  /** Guilds per shard that /gateway/bot's recommendation aims at (Discord: about 1,000). */
  guildsPerRecommendedShard?: number;
  /** session_start_limit.max_concurrency: shards that may identify together (Discord: 1 for most bots). */
  maxConcurrency?: number;
  /** Messages older than this have their edits limited (30046, as a 429): Discord, 1 hour. */
  oldMessageAgeMs?: number;
  /** How many edits of old messages a channel gets per window before 30046. */
  oldMessageEdits?: BucketLimit;
  /** Active threads per guild, and active announcement threads apart (Discord: 1,000 each). */
  maxActiveThreads?: number;
  /**
   * How long `enforce_nonce` dedupes a nonce: Discord says "the past few minutes" and gives no number,
   * so 2 minutes, the short end of that, unless a test plays the window running out.
   */
  nonceWindowMs?: number;
}

const DISCORD_EPOCH = 1420070400000n;
let sequence = 0n;
function snowflakeAt(ms: number): string {
  sequence += 1n;
  return (((BigInt(ms) - DISCORD_EPOCH) << 22n) | (sequence & 0xfffn)).toString();
}
export function snowflake(): string {
  return snowflakeAt(Date.now());
}

/** The shard that carries a guild: Discord's (guild_id >> 22) % shard_count. */
export function shardOf(guildId: string, shardCount: number): number {
  return Number((BigInt(guildId) >> 22n) % BigInt(shardCount));
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
  ) {
    super(String(body.message));
  }
}

const unknown = (what: string, code: number) => new HttpError(404, { message: `Unknown ${what}`, code });
const missingPermissions = () => new HttpError(403, { message: "Missing Permissions", code: 50013 });
const archivedThread = () => new HttpError(400, { message: "Thread is archived", code: 50083 });
const invalidForm = (field: string, message: string) =>
  new HttpError(400, {
    message: "Invalid Form Body",
    code: 50035,
    errors: { [field]: { _errors: [{ code: "BASE_TYPE_INVALID", message }] } },
  });

/** Why Discord refuses to create a thread, by JSON error code. */
const THREAD_REFUSALS: Record<number, () => HttpError> = {
  10003: () => unknown("Channel", 10003),
  50001: () => new HttpError(403, { message: "Missing Access", code: 50001 }),
  50013: missingPermissions,
  160005: () => new HttpError(400, { message: "Thread is locked", code: 160005 }),
  160006: () => new HttpError(400, { message: "Maximum number of active threads reached", code: 160006 }),
  160007: () =>
    new HttpError(400, { message: "Maximum number of active announcement threads reached", code: 160007 }),
};

interface Shard {
  id: number;
  count: number;
}

export class FakeDiscord {
  readonly token = `fake-${randomBytes(12).toString("hex")}`;
  readonly applicationId = snowflake();
  readonly botUser: FakeUser = { id: this.applicationId, username: "photo-bot", bot: true };
  readonly guilds = new Map<string, FakeGuild>();
  /** The guild every helper uses unless told otherwise. */
  readonly guildId: string;
  readonly channels = new Map<string, FakeChannel>();
  readonly messages = new Map<string, FakeMessage>();
  readonly interactions = new Map<string, FakeInteraction>();
  readonly requests: RecordedRequest[] = [];
  readonly registered = new Map<string, unknown[]>();
  readonly identifies: Array<{ intents: number; shard?: [number, number] }> = [];
  /** Gateway connections closed by the fake, with the close code. */
  readonly closes: Array<{ shard?: [number, number]; code: number }> = [];
  private readonly sockets = new Set<WebSocket>();
  private readonly shards = new Map<WebSocket, Shard>();
  private readonly files = new Map<string, FakeAttachment>();
  private readonly limiter = new RateLimiter();
  private readonly oldEdits = new RateLimiter();
  private readonly limits: Record<"message" | "reaction" | "default", BucketLimit>;
  private readonly options: Required<Omit<FakeDiscordOptions, "limits">>;
  /** Nonces of created messages by author, for `enforce_nonce`. */
  private readonly nonces = new Map<string, { messageId: string; at: number }>();
  private readonly stalls: Array<StallRule & { stalled: (request: RecordedRequest) => void }> = [];
  /** The outages under way (see outage). */
  private readonly outages = new Set<RequestMatch>();
  private guildClock = 0;
  private seq = 0;
  private port = 0;
  private readonly http: Server;
  private readonly wss: WebSocketServer;
  readonly heartbeats = { received: 0 };

  private constructor(options: FakeDiscordOptions) {
    this.limits = {
      message: { limit: 5, windowMs: 5000 },
      reaction: { limit: 1, windowMs: 250 },
      default: { limit: 50, windowMs: 1000 },
      ...options.limits,
    };
    this.options = {
      maxFileBytes: 10 * 1024 * 1024,
      heartbeatIntervalMs: 41_250,
      interactionWindowMs: 3000,
      callbackLatencyMs: 0,
      maxGuildsPerShard: 2500,
      guildsPerRecommendedShard: 1000,
      maxConcurrency: 1,
      oldMessageAgeMs: 3_600_000,
      oldMessageEdits: { limit: 1, windowMs: 60_000 },
      maxActiveThreads: 1000,
      nonceWindowMs: 120_000,
      ...options,
    };
    this.guildId = this.addGuild("Fake Guild").id;
    // A request whose client died while sending it (a bot SIGKILLed mid-request) has no one to answer.
    this.http = createServer((req, res) => void this.handleHttp(req, res).catch(() => res.destroy()));
    this.wss = new WebSocketServer({ server: this.http, path: "/gateway" });
    this.wss.on("connection", (socket) => this.handleSocket(socket));
  }

  static async start(options: FakeDiscordOptions = {}): Promise<FakeDiscord> {
    const fake = new FakeDiscord(options);
    await new Promise<void>((resolve) => fake.http.listen(0, "127.0.0.1", resolve));
    fake.port = (fake.http.address() as AddressInfo).port;
    return fake;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.port}/api`;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  // ── world building ────────────────────────────────────────────────────────────────────────────

  /**
   * A guild with the app in it: the bot too unless `botMember` is false (the commands alone). Ids are a
   * millisecond apart, so that guilds spread over shards.
   */
  addGuild(name: string, { botMember = true } = {}): FakeGuild {
    this.guildClock = Math.max(Date.now(), this.guildClock + 1);
    const guild: FakeGuild = { id: snowflakeAt(this.guildClock), name, roles: [], botMember };
    this.guilds.set(guild.id, guild);
    return guild;
  }

  addRole(name: string, { mentionable = false, guildId = this.guildId } = {}): FakeRole {
    const role: FakeRole = { id: snowflake(), name, mentionable };
    this.mustGuild(guildId).roles.push(role);
    return role;
  }

  private addChannel(channel: Omit<FakeChannel, "id">): FakeChannel {
    const full: FakeChannel = { id: snowflake(), ...channel };
    this.channels.set(full.id, full);
    return full;
  }

  addTextChannel(name: string, botPermissions = ALL_BOT_PERMISSIONS, guildId = this.guildId): FakeChannel {
    return this.addChannel({ type: ChannelType.GuildText, name, guildId, botPermissions });
  }

  addAnnouncementChannel(name: string, botPermissions = ALL_BOT_PERMISSIONS): FakeChannel {
    return this.addChannel({
      type: ChannelType.GuildAnnouncement,
      name,
      guildId: this.guildId,
      botPermissions,
    });
  }

  addForumChannel(name: string, botPermissions = ALL_BOT_PERMISSIONS): FakeChannel {
    return this.addChannel({ type: ChannelType.GuildForum, name, guildId: this.guildId, botPermissions });
  }

  /**
   * A thread a user opened: on one of their messages in a text channel, or a post in a forum (whose
   * first message has the thread's id). It inherits the parent's permissions for the bot.
   */
  addThread(parent: FakeChannel, name: string, author: FakeUser): FakeChannel {
    const forum = parent.type === ChannelType.GuildForum;
    const start = this.storeMessage(forum ? "" : parent.id, { content: name }, author, NO_PINGS);
    const thread: FakeChannel = {
      id: start.id,
      type: ChannelType.PublicThread,
      name,
      guildId: parent.guildId,
      parentId: parent.id,
      botPermissions: parent.botPermissions,
      archived: false,
      autoArchiveDuration: 1440,
      lastActivity: Date.now(),
    };
    this.channels.set(thread.id, thread);
    if (forum) start.channelId = thread.id;
    else start.threadId = thread.id;
    return thread;
  }

  addDmChannel(recipient: FakeUser): FakeChannel {
    return this.addChannel({
      type: ChannelType.DM,
      name: recipient.username,
      botPermissions: ALL_BOT_PERMISSIONS & ~PermissionFlagsBits.CreatePublicThreads,
      recipient,
    });
  }

  user(username: string): FakeUser {
    return { id: snowflake(), username };
  }

  /** Makes bytes downloadable the way Discord's CDN serves attachments; `declared` overrides metadata. */
  attachment(
    filename: string,
    bytes: Uint8Array,
    contentType: string,
    declared: { size?: number; contentType?: string | null } = {},
  ): FakeAttachment {
    const id = snowflake();
    const attachment: FakeAttachment = {
      id,
      filename,
      size: declared.size ?? bytes.byteLength,
      content_type: declared.contentType === undefined ? contentType : (declared.contentType ?? ""),
      url: `${this.origin}/attachments/${id}/${encodeURIComponent(filename)}`,
      bytes,
    };
    this.files.set(id, { ...attachment, content_type: contentType });
    return attachment;
  }

  /** The attachment's CDN link expires (Discord signs them for a day): its URL answers 404 from now on. */
  expireAttachment(attachment: FakeAttachment): void {
    this.files.delete(attachment.id);
  }

  /**
   * A moderator deletes a channel or thread: its messages go with it, the bot hears THREAD_DELETE or
   * CHANNEL_DELETE (so discord.js drops it from its cache), and its routes answer Unknown Channel.
   */
  deleteChannel(id: string): void {
    const channel = this.mustChannel(id);
    this.channels.delete(id);
    for (const message of this.messagesIn(id)) this.messages.delete(message.id);
    const thread = THREAD_TYPES.includes(channel.type);
    this.dispatch(
      thread ? "THREAD_DELETE" : "CHANNEL_DELETE",
      thread
        ? { id, type: channel.type, guild_id: channel.guildId, parent_id: channel.parentId }
        : this.channelJson(channel),
      channel.guildId,
    );
  }

  /** A moderator closes and locks a thread: archived, and no post of the bot's unarchives it. */
  lockThread(id: string): void {
    const thread = this.mustChannel(id);
    thread.archived = true;
    thread.locked = true;
  }

  /** What inactivity does: a thread archives once its last message is older than its duration. */
  archiveIdleThreads(now = Date.now()): FakeChannel[] {
    const archived: FakeChannel[] = [];
    for (const thread of this.channels.values()) {
      if (!THREAD_TYPES.includes(thread.type) || thread.archived) continue;
      const idleMinutes = (now - (thread.lastActivity ?? now)) / 60_000;
      if (idleMinutes >= (thread.autoArchiveDuration ?? 1440)) {
        thread.archived = true;
        archived.push(thread);
      }
    }
    return archived;
  }

  /**
   * The next request that `match`es is left unanswered — carried out first or not at all (`when`), its
   * connection left hanging — as when the bot dies mid-request. Resolves with the request once it has
   * stalled.
   */
  stall(rule: StallRule): Promise<RecordedRequest> {
    return new Promise((resolve) => this.stalls.push({ ...rule, stalled: resolve }));
  }

  /**
   * Discord fails on its side for the requests that `match`: each is answered 500 and not carried out
   * (discord.js tries it again, three times, then gives up) until the function returned ends the outage.
   */
  outage(match: RequestMatch): () => void {
    this.outages.add(match);
    return () => this.outages.delete(match);
  }

  // ── what users do ─────────────────────────────────────────────────────────────────────────────

  /** A user runs a slash command: INTERACTION_CREATE goes out on the shard that carries its guild. */
  runCommand(args: {
    name: string;
    user: FakeUser;
    channel: FakeChannel;
    options?: CommandOption[];
    attachments?: FakeAttachment[];
  }): FakeInteraction {
    const interaction: FakeInteraction = {
      id: snowflake(),
      token: `itoken-${randomBytes(16).toString("hex")}`,
      user: args.user,
      channelId: args.channel.id,
      dispatchedAt: Date.now(),
      followUps: [],
    };
    this.interactions.set(interaction.token, interaction);
    const guildId = args.channel.guildId;
    const resolvedAttachments = Object.fromEntries(
      (args.attachments ?? []).map((a) => [
        a.id,
        {
          id: a.id,
          filename: a.filename,
          size: a.size,
          url: a.url,
          proxy_url: a.url,
          content_type: a.content_type || undefined,
        },
      ]),
    );
    const userJson = this.userJson(args.user);
    this.dispatch(
      "INTERACTION_CREATE",
      {
        id: interaction.id,
        application_id: this.applicationId,
        type: 2,
        token: interaction.token,
        version: 1,
        ...(guildId
          ? {
              guild_id: guildId,
              member: {
                user: userJson,
                roles: [],
                permissions: "2248473465835073",
                joined_at: new Date().toISOString(),
                deaf: false,
                mute: false,
                flags: 0,
              },
              guild_locale: "en-US",
            }
          : { user: userJson }),
        channel_id: args.channel.id,
        channel: this.channelJson(args.channel),
        app_permissions: args.channel.botPermissions.toString(),
        locale: "en-US",
        entitlements: [],
        authorizing_integration_owners: guildId ? { "0": guildId } : { "1": args.user.id },
        context: guildId ? 0 : 1,
        data: {
          id: snowflake(),
          name: args.name,
          type: 1,
          options: args.options ?? [],
          ...(args.attachments?.length ? { resolved: { attachments: resolvedAttachments } } : {}),
        },
      },
      guildId,
    );
    return interaction;
  }

  /** A user reacts to a message: the reaction is stored and MESSAGE_REACTION_ADD goes out. */
  react(user: FakeUser, messageId: string, emoji: string): void {
    const message = this.mustMessage(messageId);
    this.storeReaction(message, user, emoji);
  }

  // ── gateway ───────────────────────────────────────────────────────────────────────────────────

  /** Drops every bot connection abruptly (what a network cut or a killed process looks like). */
  dropConnections(): void {
    for (const socket of this.sockets) socket.terminate();
  }

  /** Closes the connections of one shard with a close code, as Discord does (4011: sharding required). */
  closeShard(shardId: number, code: number, reason = "Sharding required."): void {
    for (const [socket, shard] of this.shards) {
      if (shard.id !== shardId) continue;
      this.closes.push({ shard: [shard.id, shard.count], code });
      socket.close(code, reason);
    }
  }

  get connectedBots(): number {
    return this.shards.size;
  }

  /** What /gateway/bot recommends: enough shards that each carries at most the recommended share. */
  recommendedShards(): number {
    const guilds = [...this.guilds.values()].filter((g) => g.botMember).map((g) => g.id);
    let count = Math.max(1, Math.ceil(guilds.length / this.options.guildsPerRecommendedShard));
    const fullest = (n: number) =>
      Math.max(...Array.from({ length: n }, (_, i) => guilds.filter((g) => shardOf(g, n) === i).length));
    while (fullest(count) > this.options.maxGuildsPerShard) count += 1;
    return count;
  }

  private guildsOf(shard: Shard): FakeGuild[] {
    return [...this.guilds.values()].filter((g) => g.botMember && shardOf(g.id, shard.count) === shard.id);
  }

  private handleSocket(socket: WebSocket): void {
    this.sockets.add(socket);
    socket.on("close", () => {
      this.sockets.delete(socket);
      this.shards.delete(socket);
    });
    this.send(socket, {
      op: 10,
      d: { heartbeat_interval: this.options.heartbeatIntervalMs },
      s: null,
      t: null,
    });
    socket.on("message", (raw) => {
      const packet = JSON.parse(String(raw)) as { op: number; d: Record<string, unknown> | number | null };
      if (packet.op === 1) {
        this.heartbeats.received += 1;
        this.send(socket, { op: 11, d: null, s: null, t: null });
      } else if (packet.op === 2) {
        this.identify(socket, packet.d as { token: string; intents: number; shard?: [number, number] });
      } else if (packet.op === 6) {
        // Resuming is not offered: the bot identifies again, as after a long outage on real Discord.
        this.send(socket, { op: 9, d: false, s: null, t: null });
      }
    });
  }

  private identify(socket: WebSocket, d: { token: string; intents: number; shard?: [number, number] }): void {
    if (d.token !== this.token) {
      socket.close(4004, "Authentication failed.");
      return;
    }
    this.identifies.push({ intents: d.intents, ...(d.shard ? { shard: d.shard } : {}) });
    const [id, count] = d.shard ?? [0, 1];
    const refuse = (code: number, reason: string) => {
      this.closes.push({ shard: [id, count], code });
      socket.close(code, reason);
    };
    if (!(count >= 1 && id >= 0 && id < count)) {
      refuse(4010, "Invalid shard.");
      return;
    }
    const shard = { id, count };
    const guilds = this.guildsOf(shard);
    if (guilds.length > this.options.maxGuildsPerShard) {
      refuse(4011, "Sharding required.");
      return;
    }
    this.shards.set(socket, shard);
    this.sendDispatch(socket, "READY", {
      v: 10,
      user: { ...this.userJson(this.botUser), bot: true },
      guilds: guilds.map((g) => ({ id: g.id, unavailable: true })),
      session_id: randomBytes(8).toString("hex"),
      resume_gateway_url: `ws://127.0.0.1:${this.port}/gateway`,
      shard: [id, count],
      application: { id: this.applicationId, flags: 0 },
    });
    for (const guild of guilds) this.sendDispatch(socket, "GUILD_CREATE", this.guildJson(guild));
  }

  private guildJson(guild: FakeGuild): Record<string, unknown> {
    const guildChannels = [...this.channels.values()].filter((c) => c.guildId === guild.id);
    const role = (r: FakeRole, position: number) => ({
      id: r.id,
      name: r.name,
      permissions: "0",
      position,
      color: 0,
      hoist: false,
      managed: false,
      mentionable: r.mentionable,
      flags: 0,
    });
    return {
      id: guild.id,
      name: guild.name,
      icon: null,
      owner_id: snowflake(),
      unavailable: false,
      member_count: 2,
      large: false,
      features: [],
      roles: [
        role({ id: guild.id, name: "@everyone", mentionable: false }, 0),
        ...guild.roles.map((r, i) => role(r, i + 1)),
      ],
      emojis: [],
      stickers: [],
      members: [
        {
          user: this.userJson(this.botUser),
          roles: [],
          joined_at: new Date().toISOString(),
          deaf: false,
          mute: false,
          flags: 0,
        },
      ],
      channels: guildChannels.filter((c) => !THREAD_TYPES.includes(c.type)).map((c) => this.channelJson(c)),
      // Real Discord lists active (not archived) threads in GUILD_CREATE: how a restarted bot knows them.
      threads: guildChannels
        .filter((c) => THREAD_TYPES.includes(c.type) && !c.archived)
        .map((c) => this.channelJson(c)),
      presences: [],
      voice_states: [],
      stage_instances: [],
      guild_scheduled_events: [],
      joined_at: new Date().toISOString(),
      preferred_locale: "en-US",
      system_channel_flags: 0,
      premium_tier: 0,
      nsfw_level: 0,
      verification_level: 0,
      default_message_notifications: 0,
      explicit_content_filter: 0,
      mfa_level: 0,
    };
  }

  private channelJson(channel: FakeChannel): Record<string, unknown> {
    const base: Record<string, unknown> = {
      id: channel.id,
      type: channel.type,
      name: channel.name,
      flags: 0,
    };
    if (channel.guildId) {
      base.guild_id = channel.guildId;
      base.permission_overwrites = [];
      base.position = 0;
      base.permissions = channel.botPermissions.toString();
    }
    if (channel.type === ChannelType.GuildForum) {
      base.available_tags = [];
      base.default_reaction_emoji = null;
      base.default_sort_order = null;
      base.default_forum_layout = 0;
    }
    if (channel.parentId) {
      base.parent_id = channel.parentId;
      base.owner_id = this.botUser.id;
      base.thread_metadata = {
        archived: channel.archived ?? false,
        auto_archive_duration: channel.autoArchiveDuration ?? 1440,
        archive_timestamp: new Date().toISOString(),
        locked: channel.locked ?? false,
      };
      base.message_count = 0;
      base.member_count = 1;
    }
    if (channel.recipient) base.recipients = [this.userJson(channel.recipient)];
    return base;
  }

  private userJson(user: FakeUser): Record<string, unknown> {
    return {
      id: user.id,
      username: user.username,
      discriminator: "0",
      global_name: null,
      avatar: null,
      bot: user.bot ?? false,
    };
  }

  private send(socket: WebSocket, packet: Record<string, unknown>): void {
    if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(packet));
  }

  private sendDispatch(socket: WebSocket, t: string, d: unknown): void {
    this.seq += 1;
    this.send(socket, { op: 0, t, s: this.seq, d });
  }

  /** Sends an event on the shard that carries `guildId`; events outside guilds (DMs) go on shard 0. */
  private dispatch(t: string, d: unknown, guildId?: string): void {
    for (const [socket, shard] of this.shards) {
      const carries = guildId ? shardOf(guildId, shard.count) === shard.id : shard.id === 0;
      if (carries) this.sendDispatch(socket, t, d);
    }
  }

  // ── REST ──────────────────────────────────────────────────────────────────────────────────────

  private async handleHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.origin);
    const method = req.method ?? "GET";
    const record: RecordedRequest = { at: Date.now(), method, path: url.pathname, route: "", status: 0 };
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    let status = 200;
    let headers: Record<string, string> = {};
    let payload: unknown = null;
    let raw: { bytes: Uint8Array; type: string } | undefined;
    try {
      if (url.pathname.startsWith("/attachments/")) {
        record.route = "GET /attachments";
        // A download stalls whichever `when`: there is nothing for Discord to carry out.
        const stall = this.stallFor({ route: record.route, path: url.pathname, json: {} });
        if (stall) {
          this.requests.push(record);
          stall.stalled(record);
          return;
        }
        const id = url.pathname.split("/")[2] ?? "";
        const file = this.files.get(id);
        if (!file) throw unknown("Attachment", 0);
        raw = { bytes: file.bytes, type: file.content_type };
      } else {
        const path = url.pathname.replace(/^\/api\/v10/, "");
        const routed = await this.route(method, path, url, req, body);
        record.route = routed.route;
        // The body is parsed again only where a test singles requests out.
        const matched =
          this.outages.size + this.stalls.length > 0
            ? {
                route: routed.route,
                path,
                json: ((await parseBody(req, body)).json ?? {}) as Record<string, unknown>,
              }
            : undefined;
        if (matched && [...this.outages].some((match) => match(matched))) {
          throw new HttpError(500, { message: "500: Internal Server Error", code: 0 });
        }
        const stall = matched && this.stallFor(matched);
        if (stall) {
          if (stall.when === "after") await routed.run().catch(() => {});
          record.status = 0;
          this.requests.push(record);
          stall.stalled(record);
          return;
        }
        const decision = routed.bucket
          ? this.limiter.decide(`${routed.bucket.kind}:${routed.bucket.key}`, this.limits[routed.bucket.kind])
          : undefined;
        headers = decision?.headers ?? {};
        if (decision && !decision.allowed) {
          status = 429;
          payload = {
            message: "You are being rate limited.",
            retry_after: decision.retryAfterSeconds,
            global: false,
          };
        } else {
          const result = await routed.run();
          status = result.status;
          payload = result.body;
          headers = { ...headers, ...result.headers };
        }
      }
    } catch (error) {
      if (error instanceof HttpError) {
        status = error.status;
        payload = error.body;
        record.code = Number(error.body.code);
        if (error.body.retry_after !== undefined) {
          headers = { "retry-after": String(Math.ceil(Number(error.body.retry_after))) };
        }
      } else {
        status = 500;
        payload = { message: String(error), code: 0 };
      }
    }
    record.status = status;
    this.requests.push(record);
    if (raw) {
      res.writeHead(200, { "content-type": raw.type, "content-length": raw.bytes.byteLength });
      res.end(raw.bytes);
      return;
    }
    if (status === 204) {
      res.writeHead(204, headers);
      res.end();
      return;
    }
    res.writeHead(status, { ...headers, "content-type": "application/json" });
    res.end(JSON.stringify(payload));
  }

  /** The stall rule this request meets, taken off the list (each stalls one request). */
  private stallFor(request: Parameters<RequestMatch>[0]) {
    const index = this.stalls.findIndex((rule) => rule.match(request));
    return index < 0 ? undefined : this.stalls.splice(index, 1)[0];
  }

  private async route(
    method: string,
    path: string,
    url: URL,
    req: IncomingMessage,
    body: Buffer,
  ): Promise<{
    route: string;
    bucket?: { kind: "message" | "reaction" | "default"; key: string };
    run: () => Promise<{ status: number; body?: unknown; headers?: Record<string, string> }>;
  }> {
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const p = (i: number) => parts[i] ?? "";
    const authorized = () => {
      if (req.headers.authorization !== `Bot ${this.token}`)
        throw new HttpError(401, { message: "401: Unauthorized", code: 0 });
    };
    const form = () => parseBody(req, body);
    const ok = (value: unknown) => ({ status: 200, body: value });

    if (method === "GET" && path === "/gateway/bot") {
      return {
        route: "GET /gateway/bot",
        run: async () => {
          authorized();
          return ok({
            url: `ws://127.0.0.1:${this.port}/gateway`,
            shards: this.recommendedShards(),
            session_start_limit: {
              total: 1000,
              remaining: 999,
              reset_after: 86_400_000,
              max_concurrency: this.options.maxConcurrency,
            },
          });
        },
      };
    }
    if (method === "GET" && path === "/users/@me") {
      return {
        route: "GET /users/@me",
        run: async () => {
          authorized();
          return ok(this.userJson(this.botUser));
        },
      };
    }
    if (method === "PUT" && p(0) === "applications") {
      const guild = p(2) === "guilds" ? p(3) : "global";
      return {
        route:
          guild === "global"
            ? "PUT /applications/:app/commands"
            : "PUT /applications/:app/guilds/:guild/commands",
        run: async () => {
          authorized();
          if (p(1) !== this.applicationId) throw unknown("Application", 10002);
          const commands = JSON.parse(body.toString()) as Array<Record<string, unknown>>;
          const stored = commands.map((c) => ({
            ...c,
            id: snowflake(),
            application_id: this.applicationId,
            version: snowflake(),
          }));
          this.registered.set(guild, stored);
          return ok(stored);
        },
      };
    }
    if (method === "POST" && p(0) === "interactions" && p(3) === "callback") {
      return {
        route: "POST /interactions/:id/:token/callback",
        run: async () => this.callback(p(1), p(2), url, await form()),
      };
    }
    if (p(0) === "webhooks") {
      const application = p(1);
      const token = p(2);
      const target = p(3) === "messages" ? p(4) : undefined;
      const route = `${method} /webhooks/:app/:token${target ? (target === "@original" ? "/messages/@original" : "/messages/:id") : ""}`;
      return {
        route,
        bucket: { kind: "default", key: token },
        run: async () => this.webhook(method, application, token, target, await form()),
      };
    }
    if (p(0) === "channels") {
      const channelId = p(1);
      /** The bot may reach the channel's routes only in a guild it is a member of. */
      const reachable = () => {
        authorized();
        const guildId = this.channels.get(channelId)?.guildId;
        if (guildId && !this.mustGuild(guildId).botMember) {
          throw new HttpError(403, { message: "Missing Access", code: 50001 });
        }
      };
      if (method === "GET" && parts.length === 2) {
        return {
          route: "GET /channels/:id",
          run: async () => {
            reachable();
            return ok(this.channelJson(this.mustChannel(channelId)));
          },
        };
      }
      if (p(2) === "messages" && parts.length === 3 && method === "POST") {
        return {
          route: "POST /channels/:id/messages",
          bucket: { kind: "message", key: channelId },
          run: async () => {
            reachable();
            return ok(
              this.messageJson(
                this.createMessage(channelId, await form(), this.botUser, { checkPermissions: true }),
              ),
            );
          },
        };
      }
      if (p(2) === "messages" && parts.length === 4) {
        return {
          route: `${method} /channels/:id/messages/:id`,
          bucket: { kind: "message", key: channelId },
          run: async () => {
            reachable();
            const message = this.messageIn(channelId, p(3));
            if (method === "GET") return ok(this.messageJson(message));
            if (method === "PATCH") {
              this.checkEditable(message);
              return ok(this.messageJson(this.editMessage(message, await form())));
            }
            if (method === "DELETE") {
              this.messages.delete(message.id);
              return { status: 204 };
            }
            throw new HttpError(405, { message: "405: Method Not Allowed", code: 0 });
          },
        };
      }
      if (method === "POST" && p(2) === "messages" && p(4) === "threads") {
        return {
          route: "POST /channels/:id/messages/:id/threads",
          bucket: { kind: "default", key: channelId },
          run: async () => {
            reachable();
            return ok(
              this.startThread(
                channelId,
                p(3),
                (await form()).json as { name?: string; auto_archive_duration?: number },
              ),
            );
          },
        };
      }
      if (method === "PUT" && p(2) === "messages" && p(4) === "reactions" && p(6) === "@me") {
        return {
          route: "PUT /channels/:id/messages/:id/reactions/:emoji/@me",
          bucket: { kind: "reaction", key: channelId },
          run: async () => {
            reachable();
            const channel = this.mustChannel(channelId);
            need(channel, PermissionFlagsBits.AddReactions | PermissionFlagsBits.ReadMessageHistory);
            if (channel.archived) throw archivedThread();
            this.storeReaction(this.messageIn(channelId, p(3)), this.botUser, p(5));
            return { status: 204 };
          },
        };
      }
    }
    return {
      route: `${method} ${path}`,
      run: async () => Promise.reject(new HttpError(404, { message: "404: Not Found", code: 0 })),
    };
  }

  private async callback(
    interactionId: string,
    token: string,
    url: URL,
    body: ParsedBody,
  ): Promise<{ status: number; body?: unknown }> {
    const interaction = this.interactions.get(token);
    if (!interaction || interaction.id !== interactionId) throw unknown("interaction", 10062);
    if (interaction.acknowledgedAt !== undefined) {
      throw new HttpError(400, { message: "Interaction has already been acknowledged.", code: 40060 });
    }
    if (Date.now() - interaction.dispatchedAt > this.options.interactionWindowMs) {
      throw unknown("interaction", 10062);
    }
    const json = body.json as { type: number; data?: { flags?: number; allowed_mentions?: AllowedMentions } };
    // Acknowledged on arrival: a second callback while this one is still being answered is refused.
    interaction.acknowledgedAt = Date.now();
    interaction.callbackType = json.type;
    const flags = json.data?.flags ?? 0;
    interaction.ephemeral = (flags & 64) !== 0;
    // 4: message now; 5: deferred ("thinking…") message that an edit of @original fills in later.
    if (json.type === 4 || json.type === 5) {
      const data =
        json.type === 4
          ? { ...body, json: json.data ?? {} }
          : { json: { content: "", flags: flags | 128 }, files: [] };
      const message = this.createMessage(interaction.channelId, data, this.botUser, {
        checkPermissions: false,
      });
      message.interactionId = interaction.id;
      interaction.originalId = message.id;
    }
    if (this.options.callbackLatencyMs > 0) await sleep(this.options.callbackLatencyMs);
    if (url.searchParams.get("with_response") === "true") {
      return {
        status: 200,
        body: {
          interaction: { id: interaction.id, type: 2 },
          resource: {
            type: json.type,
            message: interaction.originalId
              ? this.messageJson(this.mustMessage(interaction.originalId))
              : undefined,
          },
        },
      };
    }
    return { status: 204 };
  }

  private webhook(
    method: string,
    application: string,
    token: string,
    target: string | undefined,
    body: ParsedBody,
  ): { status: number; body?: unknown } {
    const interaction = this.interactions.get(token);
    if (!interaction || interaction.acknowledgedAt === undefined || application !== this.applicationId)
      throw unknown("Webhook", 10015);
    // The token lives 15 minutes from the interaction, whichever process uses it.
    if (Date.now() - interaction.dispatchedAt > 15 * 60 * 1000) throw unknown("Webhook", 10015);
    const original = interaction.originalId ? this.messages.get(interaction.originalId) : undefined;
    if (target === undefined) {
      if (method !== "POST") throw new HttpError(405, { message: "405: Method Not Allowed", code: 0 });
      // A follow-up while the deferred "thinking…" message is still loading is taken as resolving it:
      // it fills in that message, which keeps the deferral's visibility whatever flags it asks for.
      if (original && (original.flags & 128) !== 0) {
        return { status: 200, body: this.messageJson(this.fillDeferred(original, body)) };
      }
      const message = this.createMessage(interaction.channelId, body, this.botUser, {
        checkPermissions: false,
      });
      message.interactionId = interaction.id;
      interaction.followUps.push(message.id);
      return { status: 200, body: this.messageJson(message) };
    }
    const id = target === "@original" ? interaction.originalId : target;
    if (!id || !this.messages.has(id)) throw unknown("Message", 10008);
    const message = this.mustMessage(id);
    if (method === "GET") return { status: 200, body: this.messageJson(message) };
    if (method === "DELETE") {
      this.messages.delete(id);
      if (id === interaction.originalId) interaction.originalId = undefined;
      return { status: 204 };
    }
    if (method === "PATCH") {
      if ((message.flags & 128) !== 0)
        return { status: 200, body: this.messageJson(this.fillDeferred(message, body)) };
      return { status: 200, body: this.messageJson(this.editMessage(message, body)) };
    }
    throw new HttpError(405, { message: "405: Method Not Allowed", code: 0 });
  }

  /** The first content of a deferred response: it notifies as a new message would. */
  private fillDeferred(message: FakeMessage, body: ParsedBody): FakeMessage {
    message.flags &= ~128;
    this.editMessage(message, body);
    message.pinged = this.pingsFor(message.channelId, message.content, body);
    return message;
  }

  private pingsFor(channelId: string, content: string, body: ParsedBody): Pings {
    const channel = this.mustChannel(channelId);
    const allowed = (body.json as { allowed_mentions?: AllowedMentions }).allowed_mentions;
    const problem = allowedMentionsProblem(allowed);
    if (problem) throw invalidForm("allowed_mentions", problem);
    const roles = channel.guildId ? this.mustGuild(channel.guildId).roles : [];
    return resolvePings(content, allowed, {
      mentionable: (id) => roles.some((r) => r.id === id && r.mentionable),
      mentionEveryone: (channel.botPermissions & PermissionFlagsBits.MentionEveryone) !== 0n,
    });
  }

  private createMessage(
    channelId: string,
    body: ParsedBody,
    author: FakeUser,
    opts: { checkPermissions: boolean },
  ): FakeMessage {
    const channel = this.mustChannel(channelId);
    const json = body.json as {
      content?: string;
      flags?: number;
      nonce?: unknown;
      enforce_nonce?: boolean;
    };
    const nonce = validNonce(json.nonce);
    // enforce_nonce: "if another message was created by the same author with the same nonce (within the
    // past few minutes), that message is returned and no new message is created" — also when it has
    // since been deleted, then as Unknown Message (a retry must not bring a deleted message back).
    const nonceKey = `${author.id}:${String(nonce)}`;
    if (json.enforce_nonce && nonce !== undefined) {
      const earlier = this.nonces.get(nonceKey);
      if (earlier && Date.now() - earlier.at < this.options.nonceWindowMs) {
        return this.mustMessage(earlier.messageId);
      }
    }
    const inThread = THREAD_TYPES.includes(channel.type);
    if (opts.checkPermissions) {
      // In a thread (a forum post included) Send Messages has no effect: Send Messages in Threads does.
      const sending = inThread ? PermissionFlagsBits.SendMessagesInThreads : PermissionFlagsBits.SendMessages;
      need(
        channel,
        PermissionFlagsBits.ViewChannel |
          sending |
          (body.files.length ? PermissionFlagsBits.AttachFiles : 0n),
      );
    }
    validateContent(json.content ?? "");
    const pinged = (json.flags ?? 0) & 128 ? NO_PINGS : this.pingsFor(channelId, json.content ?? "", body);
    const attachments = this.storeFiles(body);
    if (!json.content && attachments.length === 0 && (json.flags ?? 0) === 0) {
      throw new HttpError(400, { message: "Cannot send an empty message", code: 50006 });
    }
    // Posting in an archived thread unarchives it (not a locked one, without Manage Threads); a post is
    // activity, an edit is not.
    if (inThread && channel.archived && channel.locked) {
      if ((channel.botPermissions & PermissionFlagsBits.ManageThreads) === 0n) throw archivedThread();
    }
    if (inThread) {
      channel.archived = false;
      channel.lastActivity = Date.now();
    }
    const message = this.storeMessage(
      channelId,
      { content: json.content ?? "", flags: json.flags ?? 0, attachments },
      author,
      pinged,
    );
    if (nonce !== undefined) {
      message.nonce = nonce;
      this.nonces.set(nonceKey, { messageId: message.id, at: message.createdAt });
    }
    return message;
  }

  private storeMessage(
    channelId: string,
    fields: { content: string; flags?: number; attachments?: FakeAttachment[] },
    author: FakeUser,
    pinged: Pings,
  ): FakeMessage {
    const now = Date.now();
    const message: FakeMessage = {
      id: snowflakeAt(now),
      channelId,
      content: fields.content,
      author,
      flags: fields.flags ?? 0,
      createdAt: now,
      attachments: fields.attachments ?? [],
      reactions: new Map(),
      pinged,
      history: [],
    };
    message.history.push({
      at: now,
      content: message.content,
      attachments: message.attachments.map((a) => a.filename),
    });
    this.messages.set(message.id, message);
    return message;
  }

  /** Archived threads refuse edits; messages older than the age limit get only a few edits (30046). */
  private checkEditable(message: FakeMessage): void {
    if (this.channels.get(message.channelId)?.archived) throw archivedThread();
    if (Date.now() - message.createdAt < this.options.oldMessageAgeMs) return;
    const decision = this.oldEdits.decide(`old-edits:${message.channelId}`, this.options.oldMessageEdits);
    if (!decision.allowed) {
      throw new HttpError(429, {
        message: "Maximum number of edits to messages older than 1 hour reached. Try again later.",
        code: 30046,
        retry_after: decision.retryAfterSeconds,
        global: false,
      });
    }
  }

  private editMessage(message: FakeMessage, body: ParsedBody): FakeMessage {
    const json = body.json as {
      content?: string;
      attachments?: Array<{ id: string }>;
      allowed_mentions?: AllowedMentions;
    };
    const problem = allowedMentionsProblem(json.allowed_mentions);
    if (problem) throw invalidForm("allowed_mentions", problem);
    if (json.content !== undefined) {
      validateContent(json.content ?? "");
      message.content = json.content ?? "";
    }
    const added = this.storeFiles(body);
    if (json.attachments !== undefined || added.length) {
      // The `attachments` array lists what stays: kept old ones by id, new uploads by their index.
      const kept = (json.attachments ?? [])
        .map((a) => message.attachments.find((old) => old.id === a.id))
        .filter((a) => a !== undefined);
      message.attachments = [...kept, ...added];
    }
    message.history.push({
      at: Date.now(),
      content: message.content,
      attachments: message.attachments.map((a) => a.filename),
    });
    return message;
  }

  private storeFiles(body: ParsedBody): FakeAttachment[] {
    for (const file of body.files) {
      if (file.bytes.byteLength > this.options.maxFileBytes)
        throw new HttpError(413, { message: "Request entity too large", code: 40005 });
    }
    return body.files.map((file) =>
      this.attachment(file.name, file.bytes, file.type || "application/octet-stream"),
    );
  }

  private startThread(
    channelId: string,
    messageId: string,
    json: { name?: string; auto_archive_duration?: number },
  ): Record<string, unknown> {
    const parent = this.mustChannel(channelId);
    const message = this.messageIn(channelId, messageId);
    const type =
      parent.type === ChannelType.GuildAnnouncement
        ? ChannelType.AnnouncementThread
        : parent.type === ChannelType.GuildText
          ? ChannelType.PublicThread
          : undefined;
    if (type === undefined) {
      throw new HttpError(400, { message: "Cannot execute action on this channel type", code: 50024 });
    }
    need(parent, PermissionFlagsBits.CreatePublicThreads);
    if (parent.refuseThreadsWith !== undefined) {
      throw (THREAD_REFUSALS[parent.refuseThreadsWith] ?? missingPermissions)();
    }
    if (message.threadId)
      throw new HttpError(400, {
        message: "A thread has already been created for this message",
        code: 160004,
      });
    const name = json.name ?? "";
    // Discord counts a name in characters (code points), 1-100, and refuses text that is not valid UTF-16.
    if (/\p{Surrogate}/u.test(name) || [...name].length < 1 || [...name].length > 100) {
      throw invalidForm("name", "Must be between 1 and 100 in length, valid Unicode.");
    }
    const duration = json.auto_archive_duration ?? 1440;
    if (![60, 1440, 4320, 10080].includes(duration)) {
      throw invalidForm("auto_archive_duration", "Value must be one of (60, 1440, 4320, 10080).");
    }
    const active = [...this.channels.values()].filter(
      (c) => c.guildId === parent.guildId && c.type === type && !c.archived,
    );
    if (active.length >= this.options.maxActiveThreads) {
      throw (
        THREAD_REFUSALS[type === ChannelType.AnnouncementThread ? 160007 : 160006]?.() ?? missingPermissions()
      );
    }
    const thread: FakeChannel = {
      id: message.id,
      type,
      name,
      guildId: parent.guildId,
      parentId: parent.id,
      botPermissions: parent.botPermissions,
      archived: false,
      autoArchiveDuration: duration,
      lastActivity: Date.now(),
    };
    this.channels.set(thread.id, thread);
    message.threadId = thread.id;
    return this.channelJson(thread);
  }

  private storeReaction(message: FakeMessage, user: FakeUser, emoji: string): void {
    const users = message.reactions.get(emoji) ?? new Set<string>();
    users.add(user.id);
    message.reactions.set(emoji, users);
    const channel = this.mustChannel(message.channelId);
    this.dispatch(
      "MESSAGE_REACTION_ADD",
      {
        user_id: user.id,
        channel_id: channel.id,
        message_id: message.id,
        message_author_id: message.author.id,
        emoji: { id: null, name: emoji },
        burst: false,
        type: 0,
        ...(channel.guildId
          ? {
              guild_id: channel.guildId,
              member: {
                user: this.userJson(user),
                roles: [],
                joined_at: new Date().toISOString(),
                deaf: false,
                mute: false,
                flags: 0,
              },
            }
          : {}),
      },
      channel.guildId,
    );
  }

  messageJson(message: FakeMessage): Record<string, unknown> {
    const channel = this.mustChannel(message.channelId);
    const users = [...this.knownUsers()].filter((u) => message.pinged.users.includes(u.id));
    return {
      id: message.id,
      type: message.interactionId ? 20 : 0,
      channel_id: message.channelId,
      ...(channel.guildId ? { guild_id: channel.guildId } : {}),
      author: this.userJson(message.author),
      content: message.content,
      timestamp: new Date(message.createdAt).toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: message.pinged.everyone,
      mentions: users.map((u) => this.userJson(u)),
      mention_roles: message.pinged.roles,
      attachments: message.attachments.map(({ bytes: _bytes, ...rest }) => ({
        ...rest,
        proxy_url: rest.url,
      })),
      embeds: [],
      pinned: false,
      flags: message.flags,
      components: [],
      ...(message.nonce !== undefined ? { nonce: message.nonce } : {}),
      ...(message.threadId ? { thread: this.channelJson(this.mustChannel(message.threadId)) } : {}),
    };
  }

  private *knownUsers(): Iterable<FakeUser> {
    yield this.botUser;
    for (const interaction of this.interactions.values()) yield interaction.user;
  }

  // ── queries for tests ─────────────────────────────────────────────────────────────────────────

  mustGuild(id: string): FakeGuild {
    const guild = this.guilds.get(id);
    if (!guild) throw unknown("Guild", 10004);
    return guild;
  }

  mustChannel(id: string): FakeChannel {
    const channel = this.channels.get(id);
    if (!channel) throw unknown("Channel", 10003);
    return channel;
  }

  mustMessage(id: string): FakeMessage {
    const message = this.messages.get(id);
    if (!message) throw unknown("Message", 10008);
    return message;
  }

  /**
   * A message by its channel's route: Unknown Channel first, as Discord answers, then Unknown Message —
   * for an ephemeral message too, which exists only for its interaction's webhook.
   */
  private messageIn(channelId: string, messageId: string): FakeMessage {
    this.mustChannel(channelId);
    const message = this.mustMessage(messageId);
    if (message.channelId !== channelId || (message.flags & 64) !== 0) throw unknown("Message", 10008);
    return message;
  }

  messagesIn(channelId: string): FakeMessage[] {
    return [...this.messages.values()].filter((m) => m.channelId === channelId);
  }

  /** Requests Discord refused with one of these JSON error codes. */
  refused(...codes: number[]): RecordedRequest[] {
    return this.requests.filter((r) => r.code !== undefined && codes.includes(r.code));
  }

  attachmentBytes(attachment: FakeAttachment): Uint8Array {
    return this.files.get(attachment.id)?.bytes ?? attachment.bytes;
  }

  /** Polls until `probe` returns a value (not undefined/false), or fails naming what it waited for. */
  async waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = probe();
      if (value !== undefined && value !== false) return value;
      if (Date.now() > deadline) throw new Error(`fake Discord: timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

interface ParsedBody {
  json: unknown;
  files: Array<{ name: string; type: string; bytes: Uint8Array }>;
}

async function parseBody(req: IncomingMessage, body: Buffer): Promise<ParsedBody> {
  const type = req.headers["content-type"] ?? "";
  if (type.startsWith("multipart/form-data")) {
    const form = await new Response(body, { headers: { "content-type": type } }).formData();
    const files: ParsedBody["files"] = [];
    let json: unknown = {};
    for (const [key, value] of form.entries()) {
      if (key === "payload_json") json = JSON.parse(String(value));
      else if (typeof value !== "string")
        files.push({ name: value.name, type: value.type, bytes: new Uint8Array(await value.arrayBuffer()) });
    }
    return { json, files };
  }
  return { json: body.byteLength ? JSON.parse(body.toString()) : {}, files: [] };
}

function validateContent(content: string): void {
  if (content.length > 2000) {
    throw new HttpError(400, {
      message: "Invalid Form Body",
      code: 50035,
      errors: {
        content: { _errors: [{ code: "BASE_TYPE_MAX_LENGTH", message: "Must be 2000 or fewer in length." }] },
      },
    });
  }
}

/** A create's nonce: an integer, or a string of up to 25 characters (50035 otherwise). */
function validNonce(nonce: unknown): string | number | undefined {
  if (nonce === undefined || nonce === null) return undefined;
  if (typeof nonce === "number" && Number.isSafeInteger(nonce)) return nonce;
  if (typeof nonce === "string" && nonce.length <= 25) return nonce;
  throw invalidForm("nonce", "Must be an integer or a string of 25 or fewer characters.");
}

function need(channel: FakeChannel, bits: bigint): void {
  if ((channel.botPermissions & bits) !== bits) throw missingPermissions();
}
