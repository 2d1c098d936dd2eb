// Slash commands built from the chat-agnostic definitions (src/commands/definitions.ts).
import {
  ApplicationIntegrationType,
  InteractionContextType,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
  SlashCommandBuilder,
} from "discord.js";
import { COMMANDS, type CommandDefinition } from "../../commands/definitions.js";

function build(definition: CommandDefinition): RESTPostAPIChatInputApplicationCommandsJSONBody {
  const command = new SlashCommandBuilder()
    .setName(definition.name)
    .setDescription(definition.description)
    .setIntegrationTypes(ApplicationIntegrationType.GuildInstall)
    .setContexts(InteractionContextType.Guild, InteractionContextType.BotDM);
  for (const option of definition.options) {
    switch (option.type) {
      case "attachment":
        command.addAttachmentOption((o) =>
          o.setName(option.name).setDescription(option.description).setRequired(option.required),
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
        command.addNumberOption((o) => {
          o.setName(option.name).setDescription(option.description).setRequired(option.required);
          if (option.min !== undefined) o.setMinValue(option.min);
          if (option.max !== undefined) o.setMaxValue(option.max);
          return o;
        });
        break;
    }
  }
  return command.toJSON();
}

export function slashCommands(): RESTPostAPIChatInputApplicationCommandsJSONBody[] {
  return COMMANDS.map(build);
}
