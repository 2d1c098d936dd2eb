// The channel permissions the bot needs, and how to name the missing ones in a message.
import { PermissionFlagsBits, type PermissionsBitField, type PermissionsString } from "discord.js";

/** Without these the bot cannot run an edit in a channel at all. */
export const REQUIRED: readonly PermissionsString[] = [
  "ViewChannel",
  "SendMessages",
  "AttachFiles",
  "AddReactions",
  "ReadMessageHistory",
];

/** Without these the bot answers in the channel instead of a thread. */
export const FOR_THREADS: readonly PermissionsString[] = ["CreatePublicThreads", "SendMessagesInThreads"];

/** "Create Public Threads" from "CreatePublicThreads". */
function permissionName(flag: PermissionsString): string {
  return flag.replace(/([a-z])([A-Z])/g, "$1 $2");
}

export function missing(
  have: Readonly<PermissionsBitField> | null,
  wanted: readonly PermissionsString[],
): string[] {
  // No bitfield means no guild context (a DM): Discord does not apply channel permissions there.
  if (!have) return [];
  return wanted.filter((flag) => !have.has(PermissionFlagsBits[flag])).map(permissionName);
}

export function missingText(names: readonly string[]): string {
  return `I am missing the ${names.join(", ")} permission${names.length > 1 ? "s" : ""} in this channel`;
}
