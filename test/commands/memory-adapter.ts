// A complete ChatAdapter in memory: what a console or test adapter amounts to.
import type {
  ChatAdapter,
  CommandReply,
  Conversation,
  IncomingAttachment,
  MessageRef,
  OutgoingMessage,
} from "../../src/commands/chat.js";
import { ChatCommands, type ChatCommandsOptions } from "../../src/commands/service.js";
import type { QueueClient } from "../../src/queue/client.js";
import { type Harness, harness, PHOTO } from "../queue/support/setup.js";

/** A PNG as a platform announces it (the fixture photo's size), served from a MemoryAdapter's `files`. */
export function pngAttachment(option: string, filename: string, url = "memory://photo"): IncomingAttachment {
  return { option, filename, contentType: "image/png", size: PHOTO.byteLength, url };
}

export interface MemoryMessage extends OutgoingMessage {
  ref: MessageRef;
  reactions: string[];
}

export class MemoryAdapter implements ChatAdapter {
  readonly platform = "console" as const;
  readonly limits = { maxTextLength: 4000, maxUploadBytes: 8 * 1024 * 1024, minEditIntervalMs: 50 };
  readonly messages: MemoryMessage[] = [];
  readonly files = new Map<string, Uint8Array>();
  readonly privateReplies: string[] = [];
  private next = 0;

  async openThread(on: MessageRef, name: string) {
    return { conversation: { channel: on.conversation.channel, thread: `${name}#${on.id}` } };
  }
  async post(to: Conversation, message: OutgoingMessage): Promise<MessageRef> {
    const ref = { conversation: to, id: `m${++this.next}` };
    this.messages.push({ ...message, ref, reactions: [] });
    return ref;
  }
  async editMessage(ref: MessageRef, message: OutgoingMessage): Promise<void> {
    const found = this.messages.find((m) => m.ref.id === ref.id);
    if (found) Object.assign(found, { text: message.text, images: message.images ?? found.images });
  }
  async addReactions(ref: MessageRef, emojis: readonly string[]): Promise<void> {
    this.messages.find((m) => m.ref.id === ref.id)?.reactions.push(...emojis);
  }
  async download(attachment: IncomingAttachment): Promise<Uint8Array> {
    return this.files.get(attachment.url) ?? new Uint8Array();
  }
  mention(userId: string): string {
    return `@${userId}`;
  }

  reply(conversation: Conversation): CommandReply {
    return {
      acknowledge: async () => {},
      private: async (text) => void this.privateReplies.push(text),
      public: (message) => this.post(conversation, message),
    };
  }
}

/** ChatCommands on a MemoryAdapter (serving the fixture photo at memory://photo), a queue and no engine. */
export interface ConsoleCommands {
  h: Harness;
  queue: QueueClient;
  adapter: MemoryAdapter;
  commands: ChatCommands;
  close(): Promise<void>;
}

export async function consoleCommands(
  options: { maxQueued?: number } & Partial<Pick<ChatCommandsOptions, "prompts">> = {},
): Promise<ConsoleCommands> {
  const h = await harness();
  const { maxQueued, ...more } = options;
  const queue = await h.client({
    consumer: "console",
    platform: "console",
    ...(maxQueued === undefined ? {} : { limits: { maxQueued } }),
  });
  const adapter = new MemoryAdapter();
  adapter.files.set("memory://photo", PHOTO);
  const commands = new ChatCommands({ adapter, queue, blobs: h.blobs, redis: h.redis.client(), ...more });
  await commands.start();
  return {
    h,
    queue,
    adapter,
    commands,
    async close() {
      await commands.stop();
      await h.close();
    },
  };
}
