// The permissions the bot needs in each place it can be used, and how to name the missing ones.
import { PermissionFlagsBits, type PermissionsBitField, type PermissionsString } from "discord.js";

/**
 * Where a command runs: a server channel (text, announcement, a voice channel's chat), a thread (a
 * forum or media post is one too), or a DM. Discord applies Send Messages in channels and Send Messages
 * in Threads in threads: each has no effect in the other place.
 */
export type Place = "channel" | "thread" | "dm";

/** Without these the bot cannot run an edit in that place at all. */
export const REQUIRED: Readonly<Record<Place, readonly PermissionsString[]>> = {
  channel: ["ViewChannel", "SendMessages", "AttachFiles", "AddReactions", "ReadMessageHistory"],
  thread: ["ViewChannel", "SendMessagesInThreads", "AttachFiles", "AddReactions", "ReadMessageHistory"],
  // Discord applies no channel permissions in DMs.
  dm: [],
};

/** In a channel, without these the bot answers in the channel instead of opening a thread. */
export const FOR_THREADS: readonly PermissionsString[] = ["CreatePublicThreads", "SendMessagesInThreads"];

/** Discord's name: "Create Public Threads" from "CreatePublicThreads", "Send Messages in Threads". */
function permissionName(flag: PermissionsString): string {
  return flag.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/ (In|And) /g, (word) => word.toLowerCase());
}

export function missing(
  have: Readonly<PermissionsBitField> | null,
  wanted: readonly PermissionsString[],
): string[] {
  // No bitfield means no guild context (a DM): Discord does not apply channel permissions there.
  if (!have) return [];
  return wanted.filter((flag) => !have.has(PermissionFlagsBits[flag])).map(permissionName);
}

export function missingText(names: readonly string[], place: Place = "channel"): string {
  const where = place === "thread" ? "this thread" : "this channel";
  return `I am missing the ${names.join(", ")} permission${names.length > 1 ? "s" : ""} in ${where}`;
}
