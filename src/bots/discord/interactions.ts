// A slash-command interaction as a CommandRequest, and a CommandReply bound to it that keeps Discord's
// rules: one acknowledgement within 3 s (deferReply), ephemeral answers for problems, the public
// answer as the (deferred) original reply.
import {
  ApplicationCommandOptionType,
  AttachmentBuilder,
  type ChatInputCommandInteraction,
  type CommandInteractionOption,
  MessageFlags,
} from "discord.js";
import type {
  CommandReply,
  CommandRequest,
  Conversation,
  IncomingAttachment,
  MessageRef,
  OptionValue,
  OutgoingMessage,
} from "../../commands/chat.js";
import { childLogger } from "../../log.js";

const log = childLogger("discord");

/** If a command has not answered by then, defer (privately) so the 3-second window cannot pass. */
const SAFETY_DEFER_MS = 2000;

/** How long Discord accepts an interaction's token, from the interaction. */
const INTERACTION_TOKEN_MS = 15 * 60_000;

/** What a ReplyHandle's secret holds on Discord: the interaction's webhook. */
export interface InteractionHandle {
  application: string;
  token: string;
}

export function conversationOf(interaction: ChatInputCommandInteraction): Conversation {
  const channel = interaction.channel;
  if (channel?.isThread() && channel.parentId) return { channel: channel.parentId, thread: channel.id };
  return { channel: interaction.channelId };
}

export function commandRequest(interaction: ChatInputCommandInteraction): CommandRequest {
  const options: Record<string, OptionValue> = {};
  const attachments: IncomingAttachment[] = [];
  const visit = (option: CommandInteractionOption) => {
    if (option.type === ApplicationCommandOptionType.Attachment && option.attachment) {
      const a = option.attachment;
      attachments.push({
        option: option.name,
        filename: a.name,
        contentType: a.contentType ?? undefined,
        size: a.size,
        url: a.url,
      });
    } else if (option.value !== undefined) {
      options[option.name] = option.value;
    }
    for (const child of option.options ?? []) visit(child);
  };
  for (const option of interaction.options.data) visit(option);
  return {
    id: interaction.id,
    command: interaction.commandName,
    userId: interaction.user.id,
    conversation: conversationOf(interaction),
    options,
    attachments,
  };
}

/**
 * The reply for one command. A safety deferral ("thinking…") goes out if the command has not answered
 * within SAFETY_DEFER_MS; every answer waits for that deferral first, because an answer sent while it is
 * still in flight would be a second acknowledgement (40060) and fail. The deferral is private unless
 * the command answers in public (`answersInPublic`): a deferral's visibility is its answer's, so a private
 * one would hide the public answer from everyone but its author, and no thread opens on an ephemeral
 * message. (A private answer replaces a public deferral: see `private`.)
 */
export function commandReply(
  interaction: ChatInputCommandInteraction,
  answersInPublic: boolean,
): CommandReply & { dispose(): void } {
  const conversation = conversationOf(interaction);
  let answeredPublicly = false;
  let deferral: Promise<unknown> | undefined;
  const safety = setTimeout(() => {
    if (!interaction.deferred && !interaction.replied) {
      deferral = interaction
        .deferReply(answersInPublic ? {} : { flags: MessageFlags.Ephemeral })
        .catch((err: unknown) => log.warn({ err }, "safety deferral failed"));
    }
  }, SAFETY_DEFER_MS);
  safety.unref();
  /** No new deferral from now on, and the one in flight (if any) has landed. */
  const settled = async () => {
    clearTimeout(safety);
    await deferral;
  };
  const files = (message: OutgoingMessage) =>
    (message.images ?? []).map((i) => new AttachmentBuilder(Buffer.from(i.bytes), { name: i.name }));

  const handle: InteractionHandle = { application: interaction.applicationId, token: interaction.token };
  return {
    // A process resuming the command edits the deferred "thinking…" message into the answer, as here.
    handle: {
      secret: JSON.stringify(handle),
      until: interaction.createdTimestamp + INTERACTION_TOKEN_MS,
    },
    async acknowledge() {
      await settled();
      if (!interaction.deferred && !interaction.replied) await interaction.deferReply();
    },
    async private(text: string) {
      await settled();
      if (!interaction.deferred && !interaction.replied) {
        await interaction.reply({ content: text, flags: MessageFlags.Ephemeral });
      } else if (interaction.deferred && !answeredPublicly && !interaction.ephemeral) {
        // A public "thinking…" placeholder must not stay behind: replace it with a private answer.
        await interaction.deleteReply();
        await interaction.followUp({ content: text, flags: MessageFlags.Ephemeral });
      } else if (interaction.deferred && !answeredPublicly) {
        await interaction.editReply({ content: text });
      } else {
        await interaction.followUp({ content: text, flags: MessageFlags.Ephemeral });
      }
    },
    async public(message: OutgoingMessage): Promise<MessageRef> {
      await settled();
      if (!interaction.deferred && !interaction.replied) await interaction.deferReply();
      const sent = await interaction.editReply({
        content: message.text,
        files: files(message),
        ...allowedMentions(message),
      });
      answeredPublicly = true;
      return { conversation, id: sent.id };
    },
    dispose() {
      clearTimeout(safety);
    },
  };
}

/** Who a message may ping: only the users it names in `notify` (the client default pings nobody). */
export function allowedMentions(message: OutgoingMessage): { allowedMentions?: { users: string[] } } {
  return message.notify?.length ? { allowedMentions: { users: [...message.notify] } } : {};
}
