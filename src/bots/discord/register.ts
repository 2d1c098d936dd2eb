// Registers the slash commands with Discord: in one server (fast, for development) or globally.
import { DiscordAPIError, REST, RESTJSONErrorCodes, Routes } from "discord.js";
import { UserFacingError } from "../../errors.js";
import { slashCommands } from "./slash-commands.js";

export interface RegisterOptions {
  token: string;
  applicationId: string;
  /** Register in this server only (DISCORD_GUILD_ID): visible at once. Global commands are for production. */
  guildId?: string;
  apiUrl?: string;
}

export interface Registered {
  scope: "guild" | "global";
  names: string[];
}

export async function registerCommands(options: RegisterOptions): Promise<Registered> {
  const rest = new REST(options.apiUrl ? { api: options.apiUrl } : {}).setToken(options.token);
  const route = options.guildId
    ? Routes.applicationGuildCommands(options.applicationId, options.guildId)
    : Routes.applicationCommands(options.applicationId);
  try {
    const registered = (await rest.put(route, { body: slashCommands() })) as Array<{ name: string }>;
    return { scope: options.guildId ? "guild" : "global", names: registered.map((c) => c.name) };
  } catch (error) {
    if (!(error instanceof DiscordAPIError)) throw error;
    if (error.status === 401) {
      throw new UserFacingError(
        "Discord refused DISCORD_TOKEN (401 Unauthorized): copy the bot token again from the developer portal",
      );
    }
    if (error.code === RESTJSONErrorCodes.UnknownApplication || error.status === 404) {
      throw new UserFacingError(
        `Discord does not know DISCORD_APPLICATION_ID ${options.applicationId}, or the token belongs to another application`,
      );
    }
    if (error.code === RESTJSONErrorCodes.MissingAccess) {
      throw new UserFacingError(
        `cannot register in server DISCORD_GUILD_ID ${options.guildId}: invite the bot there with the applications.commands scope first (docs/DISCORD.md)`,
      );
    }
    throw new UserFacingError(
      `Discord refused the command registration: ${error.message} (code ${error.code})`,
    );
  }
}
