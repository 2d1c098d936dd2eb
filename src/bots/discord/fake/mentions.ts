/**
 * Who a message notifies, as Discord decides it: the mentions written in its content, filtered by the
 * request's `allowed_mentions` (absent: users, roles and @everyone are all parsed), by whether a role is
 * mentionable, and by the sender's Mention Everyone permission (needed for @everyone, @here and
 * unmentionable roles). Discord notifies only when a message is created (or a deferred interaction
 * response is first filled in), never on a later edit.
 */

type ParseKind = "users" | "roles" | "everyone";

export interface AllowedMentions {
  parse?: ParseKind[];
  users?: string[];
  roles?: string[];
  replied_user?: boolean;
}

export interface Pings {
  users: string[];
  roles: string[];
  everyone: boolean;
}

export const NO_PINGS: Pings = { users: [], roles: [], everyone: false };

/** Discord's own validation of the object; returns the problem, or undefined when it is valid. */
export function allowedMentionsProblem(allowed: AllowedMentions | undefined): string | undefined {
  if (allowed === undefined || allowed === null) return undefined;
  const parse = allowed.parse ?? [];
  if (parse.some((kind) => !["users", "roles", "everyone"].includes(kind))) {
    return "allowed_mentions.parse holds an unknown type";
  }
  // "parse: [users]" with a user list (or roles likewise) is refused: they are mutually exclusive.
  if (parse.includes("users") && (allowed.users?.length ?? 0) > 0) {
    return 'allowed_mentions: "users" in parse and a users list are mutually exclusive';
  }
  if (parse.includes("roles") && (allowed.roles?.length ?? 0) > 0) {
    return 'allowed_mentions: "roles" in parse and a roles list are mutually exclusive';
  }
  if ((allowed.users?.length ?? 0) > 100 || (allowed.roles?.length ?? 0) > 100) {
    return "allowed_mentions lists more than 100 ids";
  }
  return undefined;
}

export function resolvePings(
  content: string,
  allowed: AllowedMentions | undefined,
  context: { mentionable(roleId: string): boolean; mentionEveryone: boolean },
): Pings {
  const parse = allowed ? (allowed.parse ?? []) : ["users", "roles", "everyone"];
  const userIds = [...content.matchAll(/<@!?(\d+)>/g)].map((m) => m[1] as string);
  const roleIds = [...content.matchAll(/<@&(\d+)>/g)].map((m) => m[1] as string);
  const users = userIds.filter((id) => parse.includes("users") || allowed?.users?.includes(id));
  const roles = roleIds.filter(
    (id) =>
      (parse.includes("roles") || allowed?.roles?.includes(id)) &&
      (context.mentionable(id) || context.mentionEveryone),
  );
  const everyone =
    /@(everyone|here)\b/.test(content) && parse.includes("everyone") && context.mentionEveryone;
  return { users: [...new Set(users)], roles: [...new Set(roles)], everyone };
}

/**
 * What Discord's client shows of a message's text, as far as markup goes: a backslash before punctuation
 * shows that character and formats nothing; a masked link "[label](url)" shows its label and opens its
 * url; "**", "__", "~~" and "||" (bold, underline, strikethrough, spoiler) show nothing themselves.
 * Discord renders on the client; tests read what a user would see through this.
 */
export function rendered(content: string): { text: string; maskedLinks: string[] } {
  const maskedLinks: string[] = [];
  const text = content.replace(
    /\\([^0-9A-Za-z\s])|\[([^\]]+)\]\(([^)\s]+)\)|\*\*|__|~~|\|\|/g,
    (_markup, escaped?: string, label?: string, url?: string) => {
      if (escaped !== undefined) return escaped;
      if (label !== undefined && url !== undefined) {
        maskedLinks.push(url);
        return label;
      }
      return "";
    },
  );
  return { text, maskedLinks };
}
