// ChatAdapter on discord.js: posts, edits, threads and reactions through the client's channel managers.
import { createHash } from "node:crypto";
import {
  AttachmentBuilder,
  ChannelType,
  type Client,
  DiscordAPIError,
  HTTPError,
  InteractionWebhook,
  type PermissionsBitField,
  type RateLimitData,
  RateLimitError,
  RESTJSONErrorCodes,
  type SendableChannels,
  SnowflakeUtil,
  ThreadAutoArchiveDuration,
} from "discord.js";
import { readAtMost } from "../../commands/attachments.js";
import {
  type ChatAdapter,
  type ChatLimits,
  type Conversation,
  GoneError,
  type ImageFile,
  type IncomingAttachment,
  MessageNotEditableError,
  type MessageRef,
  type OutgoingMessage,
  PlatformUnavailableError,
  type PostOnce,
  type ReplyHandle,
  type ThreadResult,
} from "../../commands/chat.js";
import { fitText } from "../../commands/progress.js";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import { allowedMentions, type InteractionHandle } from "./interactions.js";
import { FOR_THREADS, missing, missingText } from "./permissions.js";

/** Discord's limits for a bot without server boosts. */
export const DISCORD_LIMITS: ChatLimits = {
  maxTextLength: 2000,
  maxUploadBytes: 10 * 1024 * 1024,
  // A channel takes about 5 message writes per 5 s: one progress edit every 2 s leaves room for posts.
  minEditIntervalMs: 2000,
  // Edits of messages older than an hour have their own small limit (30046).
  maxEditAgeMs: 3_600_000,
};

const THREAD_NAME_MAX = 100;

const log = childLogger("discord");

/** How long an attachment's download may take: Discord's CDN sends a 20 MiB photo in seconds. */
const DOWNLOAD_TIMEOUT_MS = 60_000;

/** How long the interaction that reported a channel's permissions stays their source (its token's life). */
const PERMISSIONS_KEPT_MS = 15 * 60_000;

/**
 * Why a thread could not be opened, by Discord's JSON error code: each falls back to the channel.
 * (Missing Permissions is caught before the request when the interaction reported the permissions.)
 */
const THREAD_REFUSALS: Readonly<Partial<Record<number, string>>> = {
  [RESTJSONErrorCodes.MissingPermissions]: missingText(["Create Public Threads"]),
  [RESTJSONErrorCodes.MissingAccess]: "Discord does not let me open threads in this channel (Missing Access)",
  [RESTJSONErrorCodes.ThreadLocked]: "Discord says threads are locked here",
  [RESTJSONErrorCodes.MaximumActiveThreads]: "this server has as many active threads as Discord allows",
  [RESTJSONErrorCodes.MaximumActiveAnnouncementThreads]:
    "this server has as many active announcement threads as Discord allows",
};

/** Refusals of an edit that every later edit would meet: the message, its channel or the bot's access is gone. */
const EDIT_GONE: ReadonlySet<number> = new Set([
  RESTJSONErrorCodes.UnknownMessage,
  RESTJSONErrorCodes.UnknownChannel,
  RESTJSONErrorCodes.MissingAccess,
]);

/**
 * Refusals of a post that every later post there would meet: the channel or the bot's access or
 * permission is gone, or the thread is archived and locked (a post unarchives only an unlocked thread).
 */
const POST_GONE: ReadonlySet<number> = new Set([
  RESTJSONErrorCodes.UnknownChannel,
  RESTJSONErrorCodes.MissingAccess,
  RESTJSONErrorCodes.MissingPermissions,
  RESTJSONErrorCodes.InvalidActionOnArchivedThread,
]);

/**
 * Whether `error` says Discord is down rather than refusing: a 5xx, or the connection failing or timing
 * out, as discord.js throws them once its own retries are spent. Node's and undici's connection errors
 * carry a string code (ECONNREFUSED, UND_ERR_SOCKET…), fetch's a TypeError caused by one; Discord's
 * refusals (DiscordAPIError) a number.
 */
function discordDown(error: unknown): boolean {
  if (error instanceof HTTPError) return error.status >= 500;
  if (!(error instanceof Error) || error instanceof DiscordAPIError) return false;
  if (error.name === "AbortError") return true;
  const code = (error as { code?: unknown }).code ?? (error.cause as { code?: unknown } | undefined)?.code;
  return typeof code === "string";
}

/**
 * `error` in the commands' terms: a GoneError when it is one of the `gone` refusals, a
 * PlatformUnavailableError while Discord is down, else itself.
 */
function chatError(error: unknown, gone: ReadonlySet<number> = new Set()): unknown {
  if (error instanceof DiscordAPIError && gone.has(Number(error.code))) return new GoneError(error.message);
  return discordDown(error) ? new PlatformUnavailableError(String(error), { cause: error }) : error;
}

const files = (images: readonly ImageFile[]) =>
  images.map((image) => new AttachmentBuilder(Buffer.from(image.bytes), { name: image.name }));

/** Discord takes nonces of up to 25 characters. */
const NONCE_LENGTH = 25;

/**
 * The nonce of one post of a job's result: the same for every attempt at it, so that with
 * `enforce_nonce` Discord answers a second attempt (within a few minutes) with the first message
 * instead of posting again. Hashed, so any job id fits the 25 characters.
 */
export function postNonce({ job, role }: Pick<PostOnce, "job" | "role">): string {
  return createHash("sha256").update(`${job}:${role}`).digest("base64url").slice(0, NONCE_LENGTH);
}

/**
 * discord.js's REST `rejectOnRateLimit`: a 429 on an edit of a message past the edit age limit is
 * Discord's 30046, whose wait can be long and which discord.js would retry without bound, holding up
 * the channel's later requests. Rejected at once instead, so the edit becomes a new post.
 */
export function rejectOldMessageEdits(maxEditAgeMs: number): (data: RateLimitData) => boolean {
  return (data) => {
    if (data.method.toUpperCase() !== "PATCH" || data.route !== "/channels/:id/messages/:id") return false;
    const id = /(\d{17,20})\/?$/.exec(new URL(data.url).pathname)?.[1];
    return id !== undefined && Date.now() - SnowflakeUtil.timestampFrom(id) >= maxEditAgeMs;
  };
}

export class DiscordAdapter implements ChatAdapter {
  readonly platform = "discord" as const;
  /** The bot's permissions per channel, as the latest interaction there reported them. */
  private readonly permissions = new Map<string, { bits: Readonly<PermissionsBitField>; at: number }>();

  constructor(
    private readonly client: Client,
    readonly limits: ChatLimits = DISCORD_LIMITS,
    private readonly downloadTimeoutMs = DOWNLOAD_TIMEOUT_MS,
  ) {}

  rememberPermissions(channelId: string, permissions: Readonly<PermissionsBitField> | null): void {
    const now = Date.now();
    // Older reports are of no use to a thread opened now: the map holds the last quarter hour only.
    for (const [id, { at }] of this.permissions)
      if (now - at > PERMISSIONS_KEPT_MS) this.permissions.delete(id);
    if (permissions) this.permissions.set(channelId, { bits: permissions, at: now });
  }

  /** Channels whose permissions are remembered (for the tests' look at the map's size). */
  get rememberedChannels(): number {
    return this.permissions.size;
  }

  private async channel(conversation: Conversation): Promise<SendableChannels> {
    const id = conversation.thread ?? conversation.channel;
    const channel = await this.client.channels.fetch(id);
    if (!channel?.isSendable()) throw new Error(`Discord channel ${id} is not one the bot can send to`);
    return channel;
  }

  async openThread(on: MessageRef, name: string): Promise<ThreadResult> {
    if (on.conversation.thread) return { conversation: on.conversation };
    const channel = await this.client.channels.fetch(on.conversation.channel);
    if (!channel || channel.isDMBased()) {
      return {
        conversation: on.conversation,
        fallbackNote: "Threads do not exist in direct messages, so I answer here.",
      };
    }
    if (channel.type !== ChannelType.GuildText && channel.type !== ChannelType.GuildAnnouncement) {
      return {
        conversation: on.conversation,
        fallbackNote: "Threads are not possible in this channel, so I answer here.",
      };
    }
    const inChannel = (why: string) => ({
      conversation: on.conversation,
      fallbackNote: `${why}, so I answer here instead of in a thread.`,
    });
    const lacking = missing(this.permissions.get(channel.id)?.bits ?? null, FOR_THREADS);
    if (lacking.length > 0) return inChannel(missingText(lacking));
    try {
      const thread = await channel.threads.create({
        name: fitText(name, THREAD_NAME_MAX, "…"),
        startMessage: on.id,
        // Threads archive after this long without a new message (edits do not count); a week outlasts
        // the queue, and picks made days later still find an open thread.
        autoArchiveDuration: ThreadAutoArchiveDuration.OneWeek,
      });
      return { conversation: { channel: channel.id, thread: thread.id } };
    } catch (error) {
      // Opened already (a command resumed after its process died before it heard back): a thread
      // started from a message has that message's id.
      if (
        error instanceof DiscordAPIError &&
        error.code === RESTJSONErrorCodes.ThreadAlreadyCreatedForMessage
      ) {
        return { conversation: { channel: channel.id, thread: on.id } };
      }
      const why = error instanceof DiscordAPIError ? THREAD_REFUSALS[Number(error.code)] : undefined;
      if (why === undefined) throw error;
      return inChannel(why);
    }
  }

  async post(to: Conversation, message: OutgoingMessage): Promise<MessageRef> {
    try {
      const channel = await this.channel(to);
      const sent = await channel.send({
        content: message.text,
        files: files(message.images ?? []),
        ...allowedMentions(message),
        ...(message.once ? { nonce: postNonce(message.once), enforceNonce: true } : {}),
      });
      return { conversation: to, id: sent.id };
    } catch (error) {
      throw chatError(error, POST_GONE);
    }
  }

  async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    try {
      const channel = await this.channel(ref.conversation);
      await channel.messages.edit(ref.id, {
        content: message.text,
        // `attachments: []` drops the old files; the new ones (if any) replace them.
        ...(message.images ? { files: files(message.images), attachments: [] } : {}),
        ...allowedMentions(message),
      });
    } catch (error) {
      // An archived thread takes posts (a post unarchives it) but no edits; an old message's edits are
      // limited (30046, met as a rejected rate limit: see rejectOldMessageEdits).
      if (error instanceof RateLimitError) {
        throw new MessageNotEditableError("Discord limits edits of messages older than an hour");
      }
      if (
        error instanceof DiscordAPIError &&
        (error.code === RESTJSONErrorCodes.InvalidActionOnArchivedThread ||
          error.code === RESTJSONErrorCodes.MaximumNumberOfEditsToMessagesOlderThanOneHourReached)
      ) {
        throw new MessageNotEditableError(error.message);
      }
      throw chatError(error, EDIT_GONE);
    }
  }

  async addReactions(ref: MessageRef, emojis: readonly string[]): Promise<void> {
    try {
      const channel = await this.channel(ref.conversation);
      for (const emoji of emojis) await channel.messages.react(ref.id, emoji);
    } catch (error) {
      throw chatError(error);
    }
  }

  async download(attachment: IncomingAttachment, maxBytes: number): Promise<Uint8Array> {
    const what = `\`${attachment.option}\` (${attachment.filename})`;
    const failed = (why: string) =>
      new UserFacingError(`${what} could not be downloaded from Discord (${why}); send it again`);
    // A connection that stalls would otherwise hold the command ("thinking…") for undici's 5 minutes,
    // then end as an error of ours.
    const deadline = AbortSignal.timeout(this.downloadTimeoutMs);
    try {
      const response = await fetch(attachment.url, { signal: deadline });
      if (!response.ok || !response.body) throw failed(`HTTP ${response.status}`);
      return await readAtMost(response.body, maxBytes, what);
    } catch (error) {
      if (error instanceof UserFacingError) throw error;
      // The deadline, or the connection lost on the way: the file may well come through another time.
      log.info({ err: error, option: attachment.option }, "attachment download failed");
      throw failed(
        deadline.aborted
          ? `no answer in ${formatSeconds(this.downloadTimeoutMs / 1000)}`
          : "the connection failed",
      );
    }
  }

  mention(userId: string): string {
    return `<@${userId}>`;
  }

  /** Edits the interaction's original response (its deferred "thinking…") through its webhook. */
  async answerOriginal(
    handle: ReplyHandle,
    to: Conversation,
    message: OutgoingMessage,
  ): Promise<MessageRef | undefined> {
    const { application, token } = JSON.parse(handle.secret) as InteractionHandle;
    try {
      const webhook = new InteractionWebhook(this.client as Client<true>, application, token);
      const sent = await webhook.editMessage("@original", {
        content: message.text,
        files: files(message.images ?? []),
        ...allowedMentions(message),
      });
      return { conversation: to, id: sent.id };
    } catch (error) {
      // Not the error itself: its url holds the token.
      log.warn(
        error instanceof DiscordAPIError
          ? { status: error.status, code: error.code, reason: error.message }
          : { reason: String(error) },
        "could not edit a resumed command's interaction response; posting the answer instead",
      );
      return undefined;
    }
  }
}
