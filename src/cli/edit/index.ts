import { Command } from "commander";
import { conceptCommand } from "./concept.js";
import { imagicCommand } from "./imagic.js";
import { swapCommand } from "./swap.js";
import { txt2imgCommand } from "./txt2img.js";

/** One factory per edit, each in its own file here (txt2img.ts, imagic.ts, …). */
const EDITS: Array<() => Command> = [txt2imgCommand, imagicCommand, swapCommand, conceptCommand];

export function editCommand(): Command {
  const edit = new Command("edit").description("run an edit locally, without chat (writes image files)");
  for (const make of EDITS) edit.addCommand(make());
  return edit;
}
