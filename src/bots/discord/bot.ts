// The Discord bot process: a discord.js Client (gateway + REST) wired to ChatCommands.
import {
  type ChatInputCommandInteraction,
  Client,
  type CloseEvent,
  Events,
  GatewayDispatchEvents,
  GatewayIntentBits,
  type GatewayMessageReactionAddDispatchData,
  type Interaction,
  Partials,
} from "discord.js";
import type { Redis } from "ioredis";
import type { ChatLimits } from "../../commands/chat.js";
import { type BotCommandsOptions, ChatCommands } from "../../commands/service.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import type { BlobStore } from "../../queue/blobs.js";
import type { QueueClient } from "../../queue/client.js";
import { DISCORD_LIMITS, DiscordAdapter, rejectOldMessageEdits } from "./adapter.js";
import { commandReply, commandRequest, conversationOf } from "./interactions.js";
import { missing, missingText, type Place, REQUIRED } from "./permissions.js";

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

/** Commands that start work in the channel (answered in public): the bot must be able to post there. */
const WORK_COMMANDS = new Set(["imagic", "swap"]);

/** Gateway close codes after which discord.js gives a shard up for good, in words for the operator. */
const FATAL_CLOSES: Readonly<Record<number, string>> = {
  4004: "authentication failed: DISCORD_TOKEN was refused",
  4010: "invalid shard",
  4011: "sharding required: the bot is in more servers than its shards may carry",
  4012: "invalid API version",
  4013: "invalid intents",
  4014: "disallowed intents: an intent the developer portal has not enabled",
};

export interface DiscordBotOptions {
  token: string;
  /** REST base URL (DISCORD_API_URL); the tests point it at their fake Discord. */
  apiUrl?: string;
  queue: QueueClient;
  blobs: BlobStore;
  redis: Redis;
  limits?: Partial<ChatLimits>;
  /** How long an attachment's download may take (default DOWNLOAD_TIMEOUT_MS). */
  downloadTimeoutMs?: number;
  commands?: BotCommandsOptions;
}

export interface DiscordBot {
  client: Client;
  commands: ChatCommands;
  /**
   * Settles when Discord closed a gateway shard for good (4011 sharding required, …): the bot no longer
   * hears commands, and the process should exit so that its supervisor starts it again.
   */
  failed: Promise<Error>;
  stop(): Promise<void>;
}

function placeOf(interaction: Interaction): Place {
  if (!interaction.inGuild()) return "dm";
  return interaction.channel?.isThread() ? "thread" : "channel";
}

/** Why the bot cannot post an edit's work where this command was run, or undefined when it can. */
function cannotWork(interaction: ChatInputCommandInteraction): string | undefined {
  // A server that added the app's commands without its bot user: the interaction comes (with @everyone's
  // permissions as the app's), but every channel route there answers Missing Access.
  if (interaction.inRawGuild()) {
    return "I am not a member of this server (it added my commands only), so I cannot post my work here: ask a server admin to add me with my invite link";
  }
  const place = placeOf(interaction);
  const lacking = missing(interaction.appPermissions, REQUIRED[place]);
  if (lacking.length > 0) {
    return `${missingText(lacking, place)}: ask a server admin to grant them (see /help)`;
  }
  return undefined;
}

export async function startDiscordBot(options: DiscordBotOptions): Promise<DiscordBot> {
  const limits = { ...DISCORD_LIMITS, ...options.limits };
  const client = new Client({
    intents: INTENTS,
    // As many shards as Discord recommends for the servers the bot is in (asked at each start).
    shards: "auto",
    // The channel of an interaction in a thread or a DM is cached from the interaction itself.
    partials: [Partials.Channel],
    // Text users wrote (a prompt, a subject) is posted verbatim: it must not ping anyone through the bot.
    // Posts that should ping their author say so (OutgoingMessage.notify).
    allowedMentions: { parse: [] },
    rest: {
      ...(options.apiUrl ? { api: options.apiUrl } : {}),
      ...(limits.maxEditAgeMs ? { rejectOnRateLimit: rejectOldMessageEdits(limits.maxEditAgeMs) } : {}),
    },
  });
  const adapter = new DiscordAdapter(client, limits, options.downloadTimeoutMs);
  const commands = new ChatCommands({
    adapter,
    queue: options.queue,
    blobs: options.blobs,
    redis: options.redis,
    ...options.commands,
  });

  let fail: (error: Error) => void = () => {};
  const failed = new Promise<Error>((resolve) => {
    fail = resolve;
  });
  client.on(Events.ShardDisconnect, (event: CloseEvent, shardId: number) => {
    const why = FATAL_CLOSES[event.code] ?? `close code ${event.code}`;
    const error = new UserFacingError(
      `Discord closed gateway shard ${shardId} for good (${event.code}, ${why}); the bot no longer hears ` +
        "commands. Restart it: it asks Discord for the shard count again at start.",
    );
    log.fatal({ shardId, code: event.code }, error.message);
    fail(error);
  });
  client.on(Events.InteractionCreate, (interaction) => void onInteraction(interaction));
  // Reactions are taken from the raw gateway event: discord.js drops MESSAGE_REACTION_ADD for an
  // uncached channel it cannot rebuild — every DM after a restart (discordjs/discord.js#11495) — and a
  // pick needs only the user, the message and the emoji.
  client.ws.on(
    GatewayDispatchEvents.MessageReactionAdd,
    (data: GatewayMessageReactionAddDispatchData) => void onReaction(data),
  );
  client.on(Events.Error, (err) => log.error({ err }, "discord client error"));

  async function onInteraction(interaction: Interaction): Promise<void> {
    if (!interaction.isChatInputCommand()) return;
    const reply = commandReply(interaction, WORK_COMMANDS.has(interaction.commandName));
    try {
      adapter.rememberPermissions(interaction.channelId, interaction.appPermissions);
      const unable = WORK_COMMANDS.has(interaction.commandName) ? cannotWork(interaction) : undefined;
      if (unable) {
        await commands.refuse(
          commandRequest(interaction),
          reply,
          `${unable}, then run /${interaction.commandName} again.`,
        );
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

  async function onReaction(data: GatewayMessageReactionAddDispatchData): Promise<void> {
    if (data.user_id === client.user?.id) return;
    const emoji = data.emoji.name;
    if (!emoji) return;
    const channel = client.channels.cache.get(data.channel_id);
    const conversation =
      channel?.isThread() && channel.parentId
        ? { channel: channel.parentId, thread: channel.id }
        : { channel: data.channel_id };
    try {
      await commands.handleReaction({
        userId: data.user_id,
        emoji,
        message: { conversation, id: data.message_id },
      });
    } catch (err) {
      log.error({ err, message: data.message_id }, "reaction handling failed");
    }
  }

  const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
  await client.login(options.token);
  // A shard refused at start (4011 when Discord's recommendation went stale…) never becomes ready.
  const started = await Promise.race([ready.then(() => undefined), failed]);
  if (started) {
    await client.destroy();
    throw started;
  }
  // Queue events (including those missed while the bot was down) only once Discord can be written to.
  await commands.start();
  log.info({ user: client.user?.tag, shards: client.ws.shards.size }, "Discord bot ready");

  return {
    client,
    commands,
    failed,
    async stop() {
      await commands.stop();
      await client.destroy();
    },
  };
}
