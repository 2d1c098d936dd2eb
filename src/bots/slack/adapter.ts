// ChatAdapter on Slack's Web API (the WebClient Bolt gives the app). Messages are chat.postMessage /
// chat.update; threads are replies under a message's ts; images go through the external upload flow
// (files.getUploadURLExternal, the upload, files.completeUploadExternal — the WebClient's filesUploadV2)
// and are attached with chat.update's file_ids, because only chat.postMessage tells the message's ts,
// which edits and reactions need. The WebClient queues calls and waits out 429s (Retry-After) itself.
// Slack has no idempotency key: a post of a job's result carries message metadata naming the job and the
// post, and a post that an earlier attempt may have made (a redelivery) is first looked for in its thread.
// Slack down (an outage, a 5xx or a network failure past the WebClient's own retries, or its
// internal_error-like answers, which the WebClient does not retry) is PlatformUnavailableError.
import { webApi } from "@slack/bolt";
import { readAtMost } from "../../commands/attachments.js";
import {
  type ChatAdapter,
  type ChatLimits,
  type Conversation,
  type ImageFile,
  type IncomingAttachment,
  MessageNotEditableError,
  type MessageRef,
  type OutgoingMessage,
  PlatformUnavailableError,
  type PostOnce,
  type ThreadResult,
} from "../../commands/chat.js";
import { slackEmojiName } from "../../commands/reactions.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";

export const SLACK_LIMITS: ChatLimits = {
  // Slack keeps 40,000 characters of a message but asks for 4,000 at most; longer ones read badly.
  maxTextLength: 4000,
  // Slack takes files up to 1 GB: every result fits as it is (the blob store caps them far lower).
  maxUploadBytes: 1024 ** 3,
  // chat.update is a Tier 3 method (about 50 a minute per workspace): one edit per 3 s per job leaves
  // room for a few jobs and the posts around them.
  minEditIntervalMs: 3000,
};

const log = childLogger("slack");

/** The metadata event type of the bot's result posts; its payload names the job and the post. */
export const RESULT_EVENT = "photo_edit_result";

const metadataOf = ({ job, role }: PostOnce) => ({ event_type: RESULT_EVENT, event_payload: { job, role } });

/** A message's id for the commands: a ts is unique only within its channel. */
export const messageId = (channel: string, ts: string) => `${channel}:${ts}`;
const tsOf = (ref: MessageRef) => ref.id.slice(ref.id.indexOf(":") + 1);

/** The Slack error code of a Web API call that answered `{ ok: false, error }`, else undefined. */
export function slackError(error: unknown): string | undefined {
  return error instanceof Error && "code" in error && error.code === webApi.ErrorCode.PlatformError
    ? (error as webApi.WebAPIPlatformError).data.error
    : undefined;
}

/** Slack's answers (`{ ok: false, error }`) that say it failed on its side: the same call may work later. */
const SLACK_DOWN: ReadonlySet<string> = new Set([
  "internal_error",
  "fatal_error",
  "service_unavailable",
  "request_timeout",
  "ratelimited",
]);

/** Whether `error` says Slack is down rather than refusing the call. */
function slackDown(error: unknown): boolean {
  if (!(error instanceof Error && "code" in error)) return false;
  switch (error.code) {
    case webApi.ErrorCode.RequestError:
    case webApi.ErrorCode.RateLimitedError:
      return true;
    case webApi.ErrorCode.HTTPError:
      return (error as webApi.WebAPIHTTPError).statusCode >= 500;
    default:
      return SLACK_DOWN.has(slackError(error) ?? "");
  }
}

/** Runs Web API calls, turning a failure of Slack's into PlatformUnavailableError. */
async function whileUp<T>(calls: () => Promise<T>): Promise<T> {
  try {
    return await calls();
  } catch (error) {
    throw slackDown(error) ? new PlatformUnavailableError(String(error), { cause: error }) : error;
  }
}

/**
 * The commands write Discord-flavoured Markdown. Slack's mrkdwn bolds with one asterisk and needs &, < and >
 * escaped, except in the mentions this adapter writes.
 */
export function mrkdwn(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/&lt;@([UW][A-Z0-9]+)&gt;/g, "<@$1>")
    .replace(/\*\*(.+?)\*\*/g, "*$1*");
}

/**
 * Text as the user typed it, from text Slack delivers escaped (a slash command's `text`: &, < and > arrive
 * as &amp;, &lt; and &gt;); `&amp;` last, so that a typed "&lt;" stays "&lt;".
 */
export function typedText(escaped: string): string {
  return escaped.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

export class SlackAdapter implements ChatAdapter {
  readonly platform = "slack" as const;
  /** Files this process attached to each message it edits, deleted when replaced (previews pile up otherwise). */
  private readonly attached = new Map<string, string[]>();

  constructor(
    private readonly client: webApi.WebClient,
    private readonly botToken: string,
    readonly limits: ChatLimits = SLACK_LIMITS,
  ) {}

  async openThread(on: MessageRef): Promise<ThreadResult> {
    // Slack threads have no name and need no permission: replies under the answer's ts are the thread.
    if (on.conversation.thread) return { conversation: on.conversation };
    return { conversation: { channel: on.conversation.channel, thread: tsOf(on) } };
  }

  async post(to: Conversation, message: OutgoingMessage): Promise<MessageRef> {
    return whileUp(async () => {
      if (message.once?.retry) {
        const earlier = await this.findPost(to, message.once);
        if (earlier) {
          const ref: MessageRef = { conversation: to, id: messageId(to.channel, earlier.ts) };
          // Cut off between the post and its files: attach them now.
          if (message.images?.length && !earlier.hasFiles) await this.editMessage(ref, message);
          return ref;
        }
      }
      const sent = await this.client.chat.postMessage({
        channel: to.channel,
        ...(to.thread ? { thread_ts: to.thread } : {}),
        text: mrkdwn(message.text),
        ...(message.once ? { metadata: metadataOf(message.once) } : {}),
      });
      // A post to a user id lands in the bot's DM with them: the answer names that channel.
      const channel = sent.channel ?? to.channel;
      const ref: MessageRef = { conversation: { ...to, channel }, id: messageId(channel, sent.ts ?? "") };
      if (message.images?.length) await this.editMessage(ref, message);
      return ref;
    });
  }

  async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    return whileUp(async () => {
      const files = message.images ? await this.upload(message.images) : undefined;
      try {
        await this.client.chat.update({
          channel: ref.conversation.channel,
          ts: tsOf(ref),
          text: mrkdwn(message.text),
          ...(files ? { file_ids: files } : {}),
          ...(message.once ? { metadata: metadataOf(message.once) } : {}),
        });
      } catch (error) {
        // Someone deleted the message (a progress message, mid-job): its thread still takes a new post.
        if (slackError(error) === "message_not_found") throw new MessageNotEditableError("message deleted");
        throw error;
      }
      if (!files) return;
      const replaced = this.attached.get(ref.id) ?? [];
      if (files.length > 0) this.attached.set(ref.id, files);
      else this.attached.delete(ref.id);
      for (const file of replaced) {
        await this.client.files.delete({ file }).catch(() => {}); // already gone: nothing to tidy
      }
    });
  }

  async addReactions(ref: MessageRef, emojis: readonly string[]): Promise<void> {
    return whileUp(async () => {
      for (const emoji of emojis) {
        try {
          await this.client.reactions.add({
            channel: ref.conversation.channel,
            timestamp: tsOf(ref),
            name: slackEmojiName(emoji),
          });
        } catch (error) {
          // A retried call whose first attempt went through: the reaction is there, as wanted.
          if (slackError(error) !== "already_reacted") throw error;
        }
      }
    });
  }

  async download(attachment: IncomingAttachment, maxBytes: number): Promise<Uint8Array> {
    const what = `\`${attachment.option}\` (${attachment.filename})`;
    if (!this.isSlack(new URL(attachment.url))) {
      throw new UserFacingError(`${what} is not a file on Slack; upload it to Slack`);
    }
    // Private file URLs need the bot token; without files:read Slack answers with its sign-in page.
    const response = await fetch(attachment.url, { headers: { authorization: `Bearer ${this.botToken}` } });
    if (response.status === 404 || response.status === 410) {
      throw new UserFacingError(`${what} is no longer on Slack (deleted?); upload it again`);
    }
    if (response.headers.get("content-type")?.startsWith("text/html")) {
      await response.body?.cancel();
      throw new UserFacingError(
        `${what} could not be downloaded: Slack sent its sign-in page, so this app lacks the files:read scope (an admin must add it; see docs/SLACK.md)`,
      );
    }
    if (!response.ok || !response.body) {
      throw new UserFacingError(
        `${what} could not be downloaded from Slack (HTTP ${response.status}); try again`,
      );
    }
    return readAtMost(response.body, maxBytes, what);
  }

  mention(userId: string): string {
    return `<@${userId}>`;
  }

  /** The bot token goes to Slack only: its hosts over HTTPS, or the Web API's own host (SLACK_API_URL). */
  private isSlack(url: URL): boolean {
    if (url.host === new URL(this.client.slackApiUrl).host) return true;
    return url.protocol === "https:" && /(^|\.)slack(-gov)?\.com$/.test(url.hostname);
  }

  /**
   * The bot's message that carries this post's metadata, if an earlier attempt made it: in the thread
   * (every page), or for a post outside threads (a command's public answer) among the channel's latest
   * 200 messages — a command is resumed within a lease or two of its answer, and paging a busy channel's
   * whole history would eat its rate limit. Without the history scopes (an install from before they were
   * asked for), or not found, the post goes out again.
   */
  private async findPost(
    to: Conversation,
    once: PostOnce,
  ): Promise<{ ts: string; hasFiles: boolean } | undefined> {
    const page = (cursor?: string) =>
      to.thread
        ? this.client.conversations.replies({
            channel: to.channel,
            ts: to.thread,
            include_all_metadata: true,
            limit: 200,
            ...(cursor ? { cursor } : {}),
          })
        : this.client.conversations.history({ channel: to.channel, include_all_metadata: true, limit: 200 });
    try {
      let cursor: string | undefined;
      do {
        const { messages, response_metadata } = await page(cursor);
        const found = messages?.find((m) => {
          const payload = m.metadata?.event_payload as Record<string, unknown> | undefined;
          return (
            m.metadata?.event_type === RESULT_EVENT && payload?.job === once.job && payload.role === once.role
          );
        });
        if (found?.ts) return { ts: found.ts, hasFiles: (found.files?.length ?? 0) > 0 };
        cursor = (to.thread && response_metadata?.next_cursor) || undefined;
      } while (cursor);
    } catch (error) {
      if (slackError(error) !== "missing_scope") throw error;
      log.warn(
        { job: once.job },
        "cannot look for an earlier post of this result (the app lacks the *:history scopes): posting it again",
      );
    }
    return undefined;
  }

  /** Uploads files without sharing them anywhere; chat.update attaches them to a message. */
  private async upload(images: readonly ImageFile[]): Promise<string[]> {
    if (images.length === 0) return [];
    const uploaded = await this.client.filesUploadV2({
      file_uploads: images.map((image) => ({ file: Buffer.from(image.bytes), filename: image.name })),
    });
    const completions = uploaded.files as Array<{ files?: Array<{ id?: string }> }>;
    return completions.flatMap((c) => c.files ?? []).map((f) => f.id ?? "");
  }
}
