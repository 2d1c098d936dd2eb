// The Slack bot process: a Bolt App (Socket Mode, or HTTP with signed requests) wired to ChatCommands.
//   /imagic [prompt], /swap [subject]       → a form (modal) for the photos and options
//   /imagic cancel | queue | help          → answered at once, privately
//   "Edit with Imagic" on a photo message  → the /imagic form with that photo
//   form submitted                         → the command, as Discord runs it (src/commands)
//   reaction_added                         → picks
import {
  App,
  HTTPReceiver,
  type Logger,
  LogLevel,
  type RespondFn,
  type SlackShortcut,
  SocketModeReceiver,
  type types,
  type ViewSubmitAction,
  type webApi,
} from "@slack/bolt";
import type { ChatLimits } from "../../commands/chat.js";
import { type BotCommandsOptions, ChatCommands } from "../../commands/service.js";
import { UserFacingError } from "../../errors.js";
import { childLogger, type Logger as Pino } from "../../log.js";
import type { QueueSide } from "../queue-side.js";
import { messageId, SLACK_LIMITS, SlackAdapter, slackError, typedText } from "./adapter.js";
import { commandForm, FORM_COMMANDS, type FormContext, formContext } from "./modals.js";
import { conversationOf, formReply, formRequest, slashReply } from "./requests.js";

/** The message shortcut's callback id (docs/SLACK.md's manifest names it). */
export const EDIT_SHORTCUT = "imagic_edit_message";
/** `/imagic <word>` runs these commands instead of opening the form. */
const SUBCOMMANDS = new Set(["cancel", "queue", "help"]);
/** What a slash command's text prefills in its form. */
const PREFILL: Record<string, string> = { imagic: "prompt", swap: "subject" };

export type SlackConnection =
  | { mode: "socket"; appToken: string }
  | { mode: "http"; signingSecret: string; port: number };

export interface SlackBotOptions extends QueueSide {
  botToken: string;
  connection: SlackConnection;
  /** Web API base URL (SLACK_API_URL); the tests point it at their fake Slack. */
  apiUrl?: string;
  limits?: Partial<ChatLimits>;
  commands?: BotCommandsOptions;
}

export interface SlackBot {
  app: App;
  commands: ChatCommands;
  stop(): Promise<void>;
}

/** Bolt's logger interface on our pino logger; LOG_LEVEL decides what is written. */
function boltLogger(log: Pino): Logger {
  const text = (parts: unknown[]) =>
    parts
      .map((p) => (p instanceof Error ? p.message : typeof p === "string" ? p : JSON.stringify(p)))
      .join(" ");
  const levels: Record<string, LogLevel> = {
    trace: LogLevel.DEBUG,
    debug: LogLevel.DEBUG,
    info: LogLevel.INFO,
    warn: LogLevel.WARN,
  };
  return {
    debug: (...parts) => log.debug(text(parts)),
    info: (...parts) => log.info(text(parts)),
    warn: (...parts) => log.warn(text(parts)),
    error: (...parts) => log.error(text(parts)),
    setLevel: () => {},
    getLevel: () => levels[log.level] ?? LogLevel.ERROR,
    setName: () => {},
  };
}

/** The photo of a message a shortcut ran on: its first image file (or a file Slack did not describe). */
function photoOf(shortcut: SlackShortcut): { id: string; name: string } | undefined {
  if (shortcut.type !== "message_action") return undefined;
  const files = (shortcut.message.files ?? []) as Array<{ id: string; name?: string; mimetype?: string }>;
  const file = files.find((f) => f.mimetype?.startsWith("image/")) ?? files.find((f) => !f.mimetype);
  return file && { id: file.id, name: file.name ?? file.id };
}

/** A form for a trigger; if Slack no longer takes the trigger (over 3 s old), the user is told to retry. */
async function openForm(
  client: webApi.WebClient,
  trigger: string,
  view: types.ModalView,
  respond: RespondFn,
) {
  try {
    await client.views.open({ trigger_id: trigger, view });
  } catch (error) {
    if (slackError(error) !== "expired_trigger_id") throw error;
    await respond({
      response_type: "ephemeral",
      text: "⚠️ I was too slow to open the form (Slack allows 3 seconds); please run the command again.",
    });
  }
}

/** What Slack says about each token when it refuses it at start-up. */
const REFUSED: Record<string, string> = {
  invalid_auth: "is not valid (revoked, or copied wrong)",
  not_authed: "is missing",
  account_inactive: "belongs to a deactivated app or workspace",
  token_revoked: "was revoked",
  not_allowed_token_type: "is the wrong kind of token",
};

/** Checks the bot token (auth.test), then connects (Socket Mode) or listens (HTTP); a refusal names the setting. */
async function connect(app: App): Promise<void> {
  const refused = (setting: string) => (error: unknown) => {
    const why = REFUSED[slackError(error) ?? ""];
    if (!why) throw error;
    throw new UserFacingError(`Slack refused ${setting}: the token ${why}; see docs/SLACK.md`);
  };
  await app.init().catch(refused("SLACK_BOT_TOKEN"));
  // Only Socket Mode presents a token here (apps.connections.open); HTTP mode just listens.
  await app.start().catch(refused("SLACK_APP_TOKEN"));
}

export async function startSlackBot(options: SlackBotOptions): Promise<SlackBot> {
  const { connection } = options;
  const log = childLogger("slack");
  const logger = boltLogger(log);
  const clientOptions = options.apiUrl ? { slackApiUrl: options.apiUrl } : {};
  const receiver =
    connection.mode === "socket"
      ? new SocketModeReceiver({
          appToken: connection.appToken,
          logger,
          // `start` runs the engine in this process, and building its graphs holds the event loop for
          // seconds: with the SDK's 5 s pong timeout the connection would drop, and requests sent while it
          // reconnects would be lost. Slack's own side waits 30 s for our pings.
          clientPingTimeout: 30_000,
          installerOptions: { clientOptions: { ...clientOptions } },
        })
      : // Checks every request's signature and timestamp (5 minutes), answering 401 otherwise.
        new HTTPReceiver({ signingSecret: connection.signingSecret, port: connection.port, logger });
  const app = new App({
    token: options.botToken,
    logger,
    receiver,
    clientOptions,
    // connect() checks the bot token (auth.test) before anything else starts.
    deferInitialization: true,
  });
  const adapter = new SlackAdapter(app.client, options.botToken, { ...SLACK_LIMITS, ...options.limits });
  const commands = new ChatCommands({
    adapter,
    queue: options.queue,
    blobs: options.blobs,
    redis: options.redis,
    ...options.commands,
  });

  app.command(/^\/(imagic|swap)$/, async ({ command, ack, respond, client }) => {
    const name = command.command.slice(1);
    const text = typedText(command.text).trim();
    const conversation = { channel: command.channel_id };
    if (name === "imagic" && SUBCOMMANDS.has(text.toLowerCase())) {
      const reply = slashReply({ adapter, client, userId: command.user_id, conversation, respond }, ack);
      try {
        const request = {
          command: text.toLowerCase(),
          userId: command.user_id,
          conversation,
          options: {},
          attachments: [],
        };
        await commands.handleCommand(request, reply);
      } finally {
        reply.dispose();
      }
      return;
    }
    const context: FormContext = { channel: command.channel_id };
    const field = PREFILL[name];
    const prefill = field && text ? { [field]: text } : {};
    // The trigger lives 3 s from the command: open the form while the acknowledgement goes out.
    await Promise.all([
      ack(),
      openForm(client, command.trigger_id, commandForm(name, context, prefill), respond),
    ]);
  });

  app.shortcut(EDIT_SHORTCUT, async ({ shortcut, ack, respond, client }) => {
    await ack();
    const photo = photoOf(shortcut);
    if (shortcut.type !== "message_action" || !photo) {
      await respond({
        response_type: "ephemeral",
        text: "⚠️ That message has no photo to edit: use *Edit with Imagic* on a message with an image, or `/imagic`.",
      });
      return;
    }
    const { message } = shortcut;
    const context: FormContext = {
      channel: shortcut.channel.id,
      // Work in the photo's thread: the edit stays next to the photo it is about.
      thread: (message.thread_ts as string | undefined) ?? message.ts,
      files: { image: photo },
    };
    await openForm(client, shortcut.trigger_id, commandForm("imagic", context), respond);
  });

  const forms = new RegExp(`^(${FORM_COMMANDS.join("|")})$`);
  app.view<ViewSubmitAction>(
    { type: "view_submission", callback_id: forms },
    async ({ ack, body, view, client }) => {
      const conversation = conversationOf(formContext(view));
      const reply = formReply({ adapter, client, userId: body.user.id, conversation }, view, ack);
      try {
        await commands.handleCommand(await formRequest(client, view, body.user.id), reply);
      } catch (error) {
        // files.info's refusals (a deleted file, a missing scope) come before the commands see the request.
        if (!(error instanceof UserFacingError)) throw error;
        await reply.private(`⚠️ ${error.message}`);
      } finally {
        reply.dispose();
      }
    },
  );

  app.event("reaction_added", async ({ event }) => {
    if (event.item.type !== "message") return;
    const { channel, ts } = event.item;
    await commands.handleReaction({
      userId: event.user,
      emoji: event.reaction,
      message: { conversation: { channel }, id: messageId(channel, ts) },
    });
  });

  app.error(async (error) => {
    log.error({ err: error }, "Slack request handling failed");
  });

  await connect(app);
  // Queue events (including those missed while the bot was down) only once Slack can be written to.
  await commands.start();
  log.info({ mode: connection.mode }, "Slack bot ready");

  return {
    app,
    commands,
    async stop() {
      await commands.stop();
      await app.stop();
    },
  };
}
