// ChatAdapter on discord.js: posts, edits, threads and reactions through the client's channel managers.
import {
  AttachmentBuilder,
  ChannelType,
  type Client,
  DiscordAPIError,
  type PermissionsBitField,
  RESTJSONErrorCodes,
  type SendableChannels,
} from "discord.js";
import type {
  ChatAdapter,
  ChatLimits,
  Conversation,
  ImageFile,
  IncomingAttachment,
  MessageRef,
  OutgoingMessage,
  ThreadResult,
} from "../../commands/chat.js";
import { UserFacingError } from "../../errors.js";
import { formatBytes } from "../../queue/blobs.js";
import { FOR_THREADS, missing, missingText } from "./permissions.js";

/** Discord's limits for a bot without server boosts. */
export const DISCORD_LIMITS: ChatLimits = {
  maxTextLength: 2000,
  maxUploadBytes: 10 * 1024 * 1024,
  // A channel takes about 5 message writes per 5 s: one progress edit every 2 s leaves room for posts.
  minEditIntervalMs: 2000,
};

const THREAD_NAME_MAX = 100;

const files = (images: readonly ImageFile[]) =>
  images.map((image) => new AttachmentBuilder(Buffer.from(image.bytes), { name: image.name }));

export class DiscordAdapter implements ChatAdapter {
  readonly platform = "discord" as const;
  /** The bot's permissions per channel, as the latest interaction there reported them. */
  private readonly permissions = new Map<string, Readonly<PermissionsBitField>>();

  constructor(
    private readonly client: Client,
    readonly limits: ChatLimits = DISCORD_LIMITS,
  ) {}

  rememberPermissions(channelId: string, permissions: Readonly<PermissionsBitField> | null): void {
    if (permissions) this.permissions.set(channelId, permissions);
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
    const lacking = missing(this.permissions.get(channel.id) ?? null, FOR_THREADS);
    if (lacking.length > 0) {
      return {
        conversation: on.conversation,
        fallbackNote: `${missingText(lacking)}, so I answer here instead of in a thread.`,
      };
    }
    try {
      const threadName = name.length > THREAD_NAME_MAX ? `${name.slice(0, THREAD_NAME_MAX - 1)}…` : name;
      const thread = await channel.threads.create({ name: threadName, startMessage: on.id });
      return { conversation: { channel: channel.id, thread: thread.id } };
    } catch (error) {
      if (error instanceof DiscordAPIError && error.code === RESTJSONErrorCodes.MissingPermissions) {
        return {
          conversation: on.conversation,
          fallbackNote: `${missingText(["Create Public Threads"])}, so I answer here instead of in a thread.`,
        };
      }
      throw error;
    }
  }

  async post(to: Conversation, message: OutgoingMessage): Promise<MessageRef> {
    const channel = await this.channel(to);
    const sent = await channel.send({ content: message.text, files: files(message.images ?? []) });
    return { conversation: to, id: sent.id };
  }

  async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    const channel = await this.channel(ref.conversation);
    await channel.messages.edit(ref.id, {
      content: message.text,
      // `attachments: []` drops the old files; the new ones (if any) replace them.
      ...(message.images ? { files: files(message.images), attachments: [] } : {}),
    });
  }

  async addReactions(ref: MessageRef, emojis: readonly string[]): Promise<void> {
    const channel = await this.channel(ref.conversation);
    for (const emoji of emojis) await channel.messages.react(ref.id, emoji);
  }

  async download(attachment: IncomingAttachment, maxBytes: number): Promise<Uint8Array> {
    const response = await fetch(attachment.url);
    if (!response.ok || !response.body) {
      throw new UserFacingError(
        `\`${attachment.option}\` (${attachment.filename}) could not be downloaded from Discord (HTTP ${response.status}); send it again`,
      );
    }
    // Read at most maxBytes + 1: enough to know it is too large, whatever the declared size said.
    const chunks: Uint8Array[] = [];
    let total = 0;
    for await (const chunk of response.body) {
      chunks.push(chunk);
      total += chunk.byteLength;
      if (total > maxBytes) {
        await response.body.cancel().catch(() => {});
        throw new UserFacingError(
          `\`${attachment.option}\` (${attachment.filename}) is larger than ${formatBytes(maxBytes)}, the limit`,
        );
      }
    }
    return Buffer.concat(chunks);
  }

  mention(userId: string): string {
    return `<@${userId}>`;
  }
}
