// The one seam between chat-agnostic command logic (this folder) and a chat platform (src/bots/*).
// An adapter translates its platform's events into `CommandRequest`/`ReactionEvent` calls on
// ChatCommands, and implements `ChatAdapter` for everything the commands send back. A console or test
// adapter is a Map of messages and an array of posts.

export type Platform = "discord" | "slack" | "console";

/** Where messages go: a channel, or a thread in it (Discord: a thread channel; Slack: a thread_ts). */
export interface Conversation {
  channel: string;
  thread?: string;
}

/** A message the bot or a user posted. `id` is unique within the platform (the adapter makes it so). */
export interface MessageRef {
  conversation: Conversation;
  id: string;
}

export interface ImageFile {
  /** File name shown to users, with its extension ("grid.png"). */
  name: string;
  bytes: Uint8Array;
}

export interface OutgoingMessage {
  text: string;
  images?: readonly ImageFile[];
  /**
   * The users this message may notify. Anyone else it mentions (a user, a role, everyone, written into
   * a prompt) is shown but not pinged; without `notify` nobody is.
   */
  notify?: readonly string[];
  /**
   * Makes the post idempotent: posted again with the same job and role (a result delivered again after
   * the process that posted it died), it is not posted twice — Discord dedupes it by a nonce, Slack's
   * adapter finds it by its metadata when `retry` says an earlier attempt may have posted it.
   */
  once?: PostOnce;
}

/** Names one post of a job's result: the job, and which of its posts this is ("grid", "last"…). */
export interface PostOnce {
  job: string;
  role: string;
  /** An earlier attempt at this post may have gone through. */
  retry: boolean;
}

/** An attachment as the platform announces it, before any byte is downloaded. */
export interface IncomingAttachment {
  /** The command option that carried it ("image", "reference2"): what the user knows it by. */
  option: string;
  filename: string;
  /** MIME type as declared by the platform; undefined when it declared none. */
  contentType?: string;
  /** Declared size in bytes. */
  size: number;
  url: string;
}

export type OptionValue = string | number | boolean;

export interface CommandRequest {
  /** The platform's id of this one request (Discord's interaction id), when it has one. */
  id?: string;
  command: string;
  userId: string;
  /** Where the command was run. */
  conversation: Conversation;
  options: Readonly<Record<string, OptionValue>>;
  attachments: readonly IncomingAttachment[];
}

/** How to answer one command; the adapter binds it to the platform's request (a Discord interaction). */
export interface CommandReply {
  /** Slow work follows: acknowledge now (Discord's 3-second window) without answering yet. */
  acknowledge(): Promise<void>;
  /** An answer only the author sees (validation problems, /queue, /help). */
  private(text: string): Promise<void>;
  /** The public answer in the channel; threads open on it. */
  public(message: OutgoingMessage): Promise<MessageRef>;
  /**
   * How another process may still answer this request after this one died (kept in the command's
   * record): where the platform shows a placeholder until the answer (Discord's "thinking…").
   */
  readonly handle?: ReplyHandle;
}

/**
 * A credential with which any process may answer a request in place of the one that received it
 * (Discord: the interaction's application id and token). Kept only in the pending command's record,
 * never logged.
 */
export interface ReplyHandle {
  /** The adapter's own encoding; only ChatAdapter.answerOriginal reads it. */
  secret: string;
  /** When (epoch ms) the platform stops accepting it. */
  until: number;
}

export interface ReactionEvent {
  userId: string;
  message: MessageRef;
  /** Unicode emoji ("2️⃣") or a platform name the adapter normalised to Unicode. */
  emoji: string;
}

export interface ThreadResult {
  conversation: Conversation;
  /** Set when no thread could be opened and replies go to the channel: says why, naming permissions. */
  fallbackNote?: string;
}

export interface ChatLimits {
  /** Longest message text the platform accepts. */
  maxTextLength: number;
  /** Largest file the bot may upload. */
  maxUploadBytes: number;
  /** Least time between two edits of one message that keeps well inside the platform's rate limits. */
  minEditIntervalMs: number;
  /**
   * Age after which the platform limits edits of a message (Discord: 1 hour). A progress message is
   * replaced by a fresh one before it gets there; undefined: edits have no age limit.
   */
  maxEditAgeMs?: number;
}

/**
 * Thrown by `ChatAdapter.editMessage` when the platform refuses to edit that message any more (an
 * archived thread, the edit limit on old messages) but would accept a new post in its conversation.
 */
export class MessageNotEditableError extends Error {
  override name = "MessageNotEditableError";
}

/**
 * Thrown by `ChatAdapter.editMessage` when the message is gone for good (deleted, its conversation
 * deleted, the bot's access to it lost), and by `post` when the conversation takes no posts from the bot
 * any more (deleted, access or permission lost, a thread locked): every later attempt would be refused
 * the same way.
 */
export class GoneError extends Error {
  override name = "GoneError";
}

/**
 * Thrown by any ChatAdapter method when the platform could not be reached or failed on its side (an
 * outage: a 5xx, a network failure or a timeout, past the client library's own retries): the same
 * request may well succeed later. A refusal that will not (a missing permission, a deleted conversation)
 * is not this.
 */
export class PlatformUnavailableError extends Error {
  override name = "PlatformUnavailableError";
}

export interface ChatAdapter {
  readonly platform: Platform;
  readonly limits: ChatLimits;
  /** Opens a thread on one of the bot's messages, or falls back to the message's channel. */
  openThread(on: MessageRef, name: string): Promise<ThreadResult>;
  /**
   * Posts text and images (postImage and reply in one). Throws GoneError where no post can go any more,
   * PlatformUnavailableError (as every method may) while the platform is down.
   */
  post(to: Conversation, message: OutgoingMessage): Promise<MessageRef>;
  /**
   * Replaces the text, and the images when `message.images` is given. Throws MessageNotEditableError
   * when only a new post would get through, GoneError when the message is gone for good.
   */
  editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void>;
  /** Adds the bot's reactions, in order. */
  addReactions(ref: MessageRef, emojis: readonly string[]): Promise<void>;
  /** Downloads an announced attachment, refusing more than `maxBytes`. */
  download(attachment: IncomingAttachment, maxBytes: number): Promise<Uint8Array>;
  /** How to mention a user in a public message. */
  mention(userId: string): string;
  /**
   * Turns the placeholder a request left (CommandReply.handle) into `message`, from any process; `to` is
   * where the request was made. Undefined when the platform refuses (the placeholder is gone, the
   * handle expired): the caller posts instead. Platforms without a placeholder leave it out.
   */
  answerOriginal?(
    handle: ReplyHandle,
    to: Conversation,
    message: OutgoingMessage,
  ): Promise<MessageRef | undefined>;
}
