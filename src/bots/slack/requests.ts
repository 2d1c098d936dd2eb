// Slack requests as the commands see them: a submitted form as a CommandRequest (its files described by
// files.info), and CommandReplys bound to Slack's ways of answering — the form's own ack (inline errors
// while it is still open), a slash command's response, an ephemeral message once either has closed.
import type { AckFn, RespondArguments, RespondFn, ViewOutput, ViewResponseAction, webApi } from "@slack/bolt";
import type {
  CommandReply,
  CommandRequest,
  Conversation,
  IncomingAttachment,
  MessageRef,
  OutgoingMessage,
} from "../../commands/chat.js";
import { UserFacingError } from "../../errors.js";
import { mrkdwn, type SlackAdapter, slackError } from "./adapter.js";
import { errorBlock, type FormContext, readSubmission, type Submission } from "./modals.js";

/** If a request has not been answered by then, acknowledge it so Slack's 3-second window cannot pass. */
const SAFETY_ACK_MS = 2000;

export const conversationOf = (context: FormContext): Conversation =>
  context.thread ? { channel: context.channel, thread: context.thread } : { channel: context.channel };

/** The services Slack shows external files from, by files.info's external_type. */
const EXTERNAL: Record<string, string> = {
  gdrive: "Google Drive",
  dropbox: "Dropbox",
  box: "Box",
  onedrive: "OneDrive",
};

/**
 * A file as Slack describes it now (it may have been deleted since the form was filled in); named as the
 * form showed it, since users never see a file's id.
 */
async function describeFile(
  client: webApi.WebClient,
  { option, id, name }: Submission["files"][number],
): Promise<IncomingAttachment> {
  let described: Awaited<ReturnType<typeof client.files.info>>["file"];
  try {
    described = (await client.files.info({ file: id })).file;
  } catch (error) {
    const code = slackError(error);
    if (code === "file_not_found" || code === "file_deleted") {
      throw new UserFacingError(`\`${option}\` (${name}) was deleted, or I may not see it; upload it again`);
    }
    if (code === "missing_scope") {
      throw new UserFacingError(
        `\`${option}\`: this app may not read files (it lacks the files:read scope); a workspace admin must add it and reinstall the app (docs/SLACK.md)`,
      );
    }
    // Slack failing on its side (internal_error, fatal_error…): said under the field, so the user may send
    // the form again, instead of a form left unanswered.
    if (code)
      throw new UserFacingError(`\`${option}\` (${name}): Slack could not describe it (${code}); try again`);
    throw error;
  }
  const filename = described?.name ?? name;
  // A file from Google Drive, Dropbox or another app is only a link on Slack: there are no bytes to
  // download with the bot token (its URL, if any, is the other service's), so say so while the form is open.
  if (described?.is_external) {
    const where = EXTERNAL[described.external_type ?? ""] ?? "another service";
    throw new UserFacingError(
      `\`${option}\` (${filename}) is a link to a file on ${where}, not a file on Slack; upload the photo itself`,
    );
  }
  return {
    option,
    filename,
    contentType: described?.mimetype || undefined,
    size: described?.size ?? 0,
    url: described?.url_private_download ?? described?.url_private ?? "",
  };
}

export async function formRequest(
  client: webApi.WebClient,
  view: ViewOutput,
  userId: string,
): Promise<CommandRequest> {
  const { command, context, options, files } = readSubmission(view);
  const attachments = await Promise.all(files.map((f) => describeFile(client, f)));
  return { command, userId, conversation: conversationOf(context), options, attachments };
}

interface Target {
  adapter: SlackAdapter;
  client: webApi.WebClient;
  userId: string;
  conversation: Conversation;
  /** A slash command's response_url: private answers that work even where the bot is not a member. */
  respond?: RespondFn;
}

/** What Slack answers with before the request is acknowledged (its ack carries the answer). */
interface Early {
  ack(): Promise<void>;
  privately(text: string): Promise<void>;
}

const WHERE_NOT: Record<string, string> = {
  not_in_channel: "I am not a member of this channel: add me (`/invite @` and my name) and try again",
  channel_not_found:
    "I cannot post here (a private conversation I am not in): invite me first, then try again",
  is_archived: "this channel is archived, so I cannot post in it",
  // A channel whose posting permissions let only some members post (an announcement channel): Slack
  // counts a bot as none of them.
  restricted_action:
    "only some members may post in this channel, and I am not one of them: run the command in another channel",
};

/** Private answers after the ack: the response URL, else an ephemeral message, else a DM. */
async function whisper(target: Target, text: string): Promise<void> {
  if (target.respond) {
    await target.respond({ response_type: "ephemeral", text: mrkdwn(text) });
    return;
  }
  const { channel, thread } = target.conversation;
  try {
    await target.client.chat.postEphemeral({
      channel,
      user: target.userId,
      text: mrkdwn(text),
      ...(thread ? { thread_ts: thread } : {}),
    });
  } catch (error) {
    // Not allowed there (the bot is not a member): the bot's DM with the user always works.
    if (!slackError(error)) throw error;
    await target.client.chat.postMessage({ channel: target.userId, text: mrkdwn(text) });
  }
}

async function answer(target: Target, message: OutgoingMessage): Promise<MessageRef> {
  try {
    return await target.adapter.post(target.conversation, message);
  } catch (error) {
    const why = WHERE_NOT[slackError(error) ?? ""];
    if (why) throw new UserFacingError(why);
    throw error;
  }
}

function reply(target: Target, early: Early): CommandReply & { dispose(): void } {
  let acknowledged = false;
  const first = async (respond: () => Promise<void>): Promise<boolean> => {
    if (acknowledged) return false;
    acknowledged = true;
    clearTimeout(safety);
    await respond();
    return true;
  };
  const safety = setTimeout(() => void first(early.ack).catch(() => {}), SAFETY_ACK_MS);
  safety.unref();
  return {
    async acknowledge() {
      await first(early.ack);
    },
    async private(text) {
      if (!(await first(() => early.privately(text)))) await whisper(target, text);
    },
    async public(message) {
      await first(early.ack);
      return answer(target, message);
    },
    dispose() {
      clearTimeout(safety);
    },
  };
}

/** Answers a submitted form: problems found before the ack show under the field they are about. */
export function formReply(
  target: Omit<Target, "respond">,
  view: ViewOutput,
  ack: AckFn<ViewResponseAction>,
): CommandReply & { dispose(): void } {
  return reply(target, {
    ack: () => ack(),
    privately: async (text) => {
      const block = errorBlock(view, text);
      if (!block) {
        await ack();
        await whisper(target, text);
        return;
      }
      // Inline errors are plain text: drop the Markdown and the warning sign the field already shows.
      await ack({
        response_action: "errors",
        errors: { [block]: text.replace(/^⚠️ /, "").replace(/`/g, "") },
      });
    },
  });
}

/** Answers a slash command: privately in its acknowledgement, later through its response URL. */
export function slashReply(
  target: Target & { respond: RespondFn },
  ack: AckFn<string | RespondArguments>,
): CommandReply & { dispose(): void } {
  return reply(target, {
    ack: () => ack(),
    privately: (text) => ack({ response_type: "ephemeral", text: mrkdwn(text) }),
  });
}
