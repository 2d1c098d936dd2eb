// Slash commands built from the chat-agnostic definitions (src/commands/definitions.ts).
import {
  ApplicationIntegrationType,
  InteractionContextType,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
  SlashCommandBuilder,
  type SlashCommandIntegerOption,
  type SlashCommandNumberOption,
} from "discord.js";
import { COMMANDS, type CommandDefinition, type OptionDefinition } from "../../commands/definitions.js";

function bounded<O extends SlashCommandNumberOption | SlashCommandIntegerOption>(
  o: O,
  option: OptionDefinition,
): O {
  o.setName(option.name).setDescription(option.description).setRequired(option.required);
  if (option.min !== undefined) o.setMinValue(option.min);
  if (option.max !== undefined) o.setMaxValue(option.max);
  return o;
}

function build(definition: CommandDefinition): RESTPostAPIChatInputApplicationCommandsJSONBody {
  const command = new SlashCommandBuilder()
    .setName(definition.name)
    .setDescription(definition.description)
    .setIntegrationTypes(ApplicationIntegrationType.GuildInstall)
    .setContexts(InteractionContextType.Guild, InteractionContextType.BotDM);
  for (const option of definition.options) {
    switch (option.type) {
      case "attachment":
        // Every attachment option takes a photo: Discord's file picker then offers images only.
        command.addAttachmentOption((o) =>
          o
            .setName(option.name)
            .setDescription(option.description)
            .setRequired(option.required)
            .setFileTypes("image"),
        );
        break;
      case "string":
        command.addStringOption((o) => {
          o.setName(option.name).setDescription(option.description).setRequired(option.required);
          if (option.maxLength !== undefined) o.setMaxLength(option.maxLength);
          if (option.choices) o.addChoices(...option.choices.map((c) => ({ name: c, value: c })));
          return o;
        });
        break;
      case "number":
        command.addNumberOption((o) => bounded(o, option));
        break;
      case "integer":
        command.addIntegerOption((o) => bounded(o, option));
        break;
    }
  }
  return command.toJSON();
}

export function slashCommands(): RESTPostAPIChatInputApplicationCommandsJSONBody[] {
  return COMMANDS.map(build);
}
