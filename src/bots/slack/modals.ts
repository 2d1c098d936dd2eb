// The /imagic and /swap forms. Slack's slash commands carry only text, so each command opens a modal
// built from the chat-agnostic command definitions (src/commands/definitions.ts) — one input block per
// option, named like the option so that the commands' messages ("`eta` must be …") point at it — and its
// submission is read back into the same options and files a Discord slash command carries.
import type { types, ViewOutput } from "@slack/bolt";
import type { OptionValue } from "../../commands/chat.js";
import { COMMANDS, type CommandDefinition, type OptionDefinition } from "../../commands/definitions.js";
import { mrkdwn } from "./adapter.js";

/** The one action id of every input: the block id already names the option. */
const ACTION = "value";
const TITLES: Record<string, { title: string; submit: string }> = {
  imagic: { title: "Imagic photo edit", submit: "Edit" },
  swap: { title: "Photoswap", submit: "Swap" },
};
/** Commands that open a form (the others answer at once). */
export const FORM_COMMANDS = Object.keys(TITLES);
/** Slack's longest plain_text_input: its max_length, and so its initial_value, may not exceed this. */
const MAX_INPUT_LENGTH = 3000;

/** Where the form was opened and what it already knows; travels in the view's private_metadata. */
export interface FormContext {
  channel: string;
  /** Work under this message's thread (a shortcut on a message). */
  thread?: string;
  /** Files the form does not ask for: the photo of the message a shortcut ran on, by option. */
  files?: Record<string, { id: string; name: string }>;
}

/** Options shown together: `reference1`…`reference5` are one file input that takes up to five files. */
interface Field {
  block: string;
  options: OptionDefinition[];
}

function fields(definition: CommandDefinition): Field[] {
  const out: Field[] = [];
  for (const option of definition.options) {
    const stem = option.type === "attachment" ? /^(.*\D)\d+$/.exec(option.name)?.[1] : undefined;
    const last = out.at(-1);
    if (stem && last?.block === stem) last.options.push(option);
    else out.push({ block: stem ?? option.name, options: [option] });
  }
  return out;
}

function definitionOf(command: string): CommandDefinition {
  const definition = COMMANDS.find((c) => c.name === command);
  if (!definition || !FORM_COMMANDS.includes(command)) throw new Error(`no form for the command ${command}`);
  return definition;
}

const plain = (text: string) => ({ type: "plain_text" as const, text });

function label(field: Field): string {
  const [first] = field.options;
  const last = field.options.at(-1);
  return field.options.length > 1 ? `${first?.name} … ${last?.name}` : (first?.name ?? field.block);
}

function hint(field: Field, prefill: string | undefined): string {
  const [first] = field.options;
  const limit = first?.maxLength;
  if (prefill && limit !== undefined && prefill.length > limit) {
    const kept = prefill.length > MAX_INPUT_LENGTH ? ` (only its first ${MAX_INPUT_LENGTH} fit here)` : "";
    return `Your text is ${prefill.length} characters${kept}; the limit is ${limit}: shorten it, then send`;
  }
  if (field.options.length === 1) return first?.description ?? "";
  return `1 to ${field.options.length} photos; ${first?.description.replace(/ 1\b/, "s")}`;
}

function element(field: Field, prefill: string | undefined): types.InputBlockElement {
  const [option] = field.options;
  if (!option) throw new Error(`empty field ${field.block}`);
  if (option.type === "attachment") {
    return { type: "file_input", action_id: ACTION, max_files: field.options.length };
  }
  if (option.type === "string" && option.choices) {
    const choices = option.choices.map((c) => ({ text: plain(c), value: c }));
    const initial = choices.find((c) => c.value === prefill);
    return {
      type: "static_select",
      action_id: ACTION,
      options: choices,
      ...(initial ? { initial_option: initial } : {}),
    };
  }
  if (option.type === "string") {
    // Slack refuses a form whose initial_value is longer than its input's max_length. A longer prefill (a
    // long `/imagic <text>`) widens the input to show it whole, as far as Slack allows, rather than cut it
    // silently: the hint says so, and the command's own check names the limit under the field if it is
    // sent as it is.
    const initial = prefill?.slice(0, MAX_INPUT_LENGTH);
    return {
      type: "plain_text_input",
      action_id: ACTION,
      ...(option.maxLength !== undefined
        ? { max_length: Math.max(option.maxLength, initial?.length ?? 0) }
        : {}),
      ...(initial ? { initial_value: initial } : {}),
    };
  }
  // A number: decimals only where the option takes any number (not whole ones only).
  return {
    type: "number_input",
    action_id: ACTION,
    is_decimal_allowed: option.type === "number",
    ...(option.min !== undefined ? { min_value: String(option.min) } : {}),
    ...(option.max !== undefined ? { max_value: String(option.max) } : {}),
  };
}

/**
 * The form of `command`. `prefill` sets a text option's initial value (`/imagic a sleeping cat` fills the
 * prompt); files in the context are shown by name instead of asked for.
 */
export function commandForm(
  command: string,
  context: FormContext,
  prefill: Record<string, string> = {},
): types.ModalView {
  const definition = definitionOf(command);
  const titles = TITLES[command] ?? { title: command, submit: "Go" };
  const blocks: types.KnownBlock[] = [];
  for (const field of fields(definition)) {
    const given = field.options.map((o) => context.files?.[o.name]).filter((f) => f !== undefined);
    if (given.length > 0) {
      blocks.push({
        type: "context",
        block_id: field.block,
        elements: [
          {
            type: "mrkdwn",
            // File names are the user's: &, < and > escaped, or Slack reads a "<draft>" in one as a link.
            text: mrkdwn(`**${label(field)}**: ${given.map((f) => f.name).join(", ")} (from the message)`),
          },
        ],
      });
      continue;
    }
    const [first] = field.options;
    const typed = first ? prefill[first.name] : undefined;
    blocks.push({
      type: "input",
      block_id: field.block,
      label: plain(label(field)),
      hint: plain(hint(field, typed)),
      optional: !first?.required,
      element: element(field, typed),
    });
  }
  return {
    type: "modal",
    callback_id: command,
    title: plain(titles.title),
    submit: plain(titles.submit),
    close: plain("Cancel"),
    private_metadata: JSON.stringify(context),
    blocks,
  };
}

export interface Submission {
  command: string;
  context: FormContext;
  options: Record<string, OptionValue>;
  /** Slack files by the option that carries them, in the order the user gave them. */
  files: Array<{ option: string; id: string; name: string }>;
}

export const formContext = (view: ViewOutput) => JSON.parse(view.private_metadata) as FormContext;

/** A submitted form as the options and files of its command. Empty inputs are simply absent. */
export function readSubmission(view: ViewOutput): Submission {
  const definition = definitionOf(view.callback_id);
  const context = formContext(view);
  const options: Record<string, OptionValue> = {};
  const files: Submission["files"] = [];
  for (const field of fields(definition)) {
    const state = view.state.values[field.block]?.[ACTION];
    field.options.forEach((option, i) => {
      const given = context.files?.[option.name];
      if (given) files.push({ option: option.name, ...given });
      else if (option.type === "attachment") {
        const file = state?.files?.[i];
        if (file) files.push({ option: option.name, id: file.id, name: file.name });
      } else {
        const value = state?.selected_option?.value ?? state?.value;
        if (value !== undefined && value !== null) options[option.name] = value;
      }
    });
    // Files past the field's max_files (a form not sent by Slack's client) go on, named after the options
    // they would follow (reference6…; a second `image`), so that the command refuses them by name.
    const last = field.options.at(-1);
    for (const [i, file] of (state?.files ?? []).entries()) {
      if (i < field.options.length || !last || last.type !== "attachment") continue;
      const option = field.options.length > 1 ? `${field.block}${i + 1}` : last.name;
      files.push({ option, id: file.id, name: file.name });
    }
  }
  return { command: definition.name, context, options, files };
}

/**
 * The input block a message about an option belongs under (the commands name the option first, in
 * backticks: "`eta` must be …"); other messages go under the form's first input.
 */
export function errorBlock(view: ViewOutput, message: string): string | undefined {
  const inputs = view.blocks.filter((b) => b.type === "input").map((b) => b.block_id ?? "");
  const option = /`([a-z_]+\d*)`/.exec(message)?.[1];
  const field = fields(definitionOf(view.callback_id)).find((f) => f.options.some((o) => o.name === option));
  return field && inputs.includes(field.block) ? field.block : inputs[0];
}
