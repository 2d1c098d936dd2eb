// The Discord bot process: a discord.js Client (gateway + REST) wired to ChatCommands.
import {
  Client,
  Events,
  GatewayIntentBits,
  type Interaction,
  MessageFlags,
  type MessageReaction,
  type PartialMessageReaction,
  Partials,
  type PartialUser,
  type User,
} from "discord.js";
import type { Redis } from "ioredis";
import type { ChatLimits } from "../../commands/chat.js";
import { ChatCommands, type ChatCommandsOptions } from "../../commands/service.js";
import { childLogger } from "../../log.js";
import type { BlobStore } from "../../queue/blobs.js";
import type { QueueClient } from "../../queue/client.js";
import { DISCORD_LIMITS, DiscordAdapter } from "./adapter.js";
import { commandReply, commandRequest, conversationOf } from "./interactions.js";
import { missing, missingText, REQUIRED } from "./permissions.js";

const log = childLogger("discord");

/**
 * Gateway intents: Guilds (channels and threads in the cache), reactions in servers and in DMs.
 * No privileged intent: slash commands carry their options, so message content is never read.
 */
export const INTENTS = [
  GatewayIntentBits.Guilds,
  GatewayIntentBits.GuildMessageReactions,
  GatewayIntentBits.DirectMessageReactions,
];

/** Commands that start work in the channel: the bot must be able to post there. */
const WORK_COMMANDS = new Set(["imagic", "swap"]);

export interface DiscordBotOptions {
  token: string;
  /** REST base URL (DISCORD_API_URL); the tests point it at their fake Discord. */
  apiUrl?: string;
  queue: QueueClient;
  blobs: BlobStore;
  redis: Redis;
  limits?: Partial<ChatLimits>;
  commands?: Pick<ChatCommandsOptions, "imagicDefaults" | "imageLimits" | "positionRefreshMs">;
}

export interface DiscordBot {
  client: Client;
  commands: ChatCommands;
  stop(): Promise<void>;
}

export async function startDiscordBot(options: DiscordBotOptions): Promise<DiscordBot> {
  const client = new Client({
    intents: INTENTS,
    // Reactions on messages sent before a restart arrive for uncached messages: accept them partial.
    partials: [Partials.Message, Partials.Reaction, Partials.User, Partials.Channel],
    ...(options.apiUrl ? { rest: { api: options.apiUrl } } : {}),
  });
  const adapter = new DiscordAdapter(client, { ...DISCORD_LIMITS, ...options.limits });
  const commands = new ChatCommands({
    adapter,
    queue: options.queue,
    blobs: options.blobs,
    redis: options.redis,
    ...options.commands,
  });

  client.on(Events.InteractionCreate, (interaction) => void onInteraction(interaction));
  client.on(Events.MessageReactionAdd, (reaction, user) => void onReaction(reaction, user));
  client.on(Events.Error, (err) => log.error({ err }, "discord client error"));

  async function onInteraction(interaction: Interaction): Promise<void> {
    if (!interaction.isChatInputCommand()) return;
    const reply = commandReply(interaction);
    try {
      adapter.rememberPermissions(interaction.channelId, interaction.appPermissions);
      const lacking = interaction.inGuild() ? missing(interaction.appPermissions, REQUIRED) : [];
      if (WORK_COMMANDS.has(interaction.commandName) && lacking.length > 0) {
        await interaction.reply({
          content: `⚠️ ${missingText(lacking)}: ask a server admin to grant them (see /help), then run /${interaction.commandName} again.`,
          flags: MessageFlags.Ephemeral,
        });
        return;
      }
      log.debug({ command: interaction.commandName, conversation: conversationOf(interaction) }, "command");
      await commands.handleCommand(commandRequest(interaction), reply);
    } catch (err) {
      log.error({ err, command: interaction.commandName }, "interaction failed");
    } finally {
      reply.dispose();
    }
  }

  async function onReaction(reaction: MessageReaction | PartialMessageReaction, user: User | PartialUser) {
    if (user.id === client.user?.id) return;
    const emoji = reaction.emoji.name;
    if (!emoji) return;
    const message = reaction.message;
    const channel = message.channel;
    const conversation =
      channel?.isThread() && channel.parentId
        ? { channel: channel.parentId, thread: channel.id }
        : { channel: message.channelId };
    try {
      await commands.handleReaction({ userId: user.id, emoji, message: { conversation, id: message.id } });
    } catch (err) {
      log.error({ err, message: message.id }, "reaction handling failed");
    }
  }

  const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
  await client.login(options.token);
  await ready;
  // Queue events (including those missed while the bot was down) only once Discord can be written to.
  await commands.start();
  log.info({ user: client.user?.tag }, "Discord bot ready");

  return {
    client,
    commands,
    async stop() {
      commands.stop();
      await client.destroy();
    },
  };
}
