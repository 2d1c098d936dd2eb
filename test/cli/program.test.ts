import { type Command, CommanderError } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../../src/cli/program.js";
import { runCli } from "./run-cli.js";

const SUBCOMMANDS = ["start", "bot", "engine", "edit", "bench"];

/** Parses argv in process; returns what commander printed and how it ended. */
async function parse(args: string[]): Promise<{ out: string; err: string; error?: CommanderError }> {
  let out = "";
  let err = "";
  const quiet = (command: Command) => {
    command.exitOverride().configureOutput({
      writeOut: (text) => {
        out += text;
      },
      writeErr: (text) => {
        err += text;
      },
    });
    for (const sub of command.commands) quiet(sub);
  };
  const program = buildProgram();
  quiet(program);
  try {
    await program.parseAsync(args, { from: "user" });
    return { out, err };
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    return { out, err, error };
  }
}

describe("CLI parsing", () => {
  it("lists every subcommand in --help", async () => {
    const { out, error } = await parse(["--help"]);
    expect(error?.code).toBe("commander.helpDisplayed");
    for (const name of SUBCOMMANDS) expect(out).toMatch(new RegExp(`^  ${name} `, "m"));
  });

  it.each(SUBCOMMANDS)("prints usage for `%s --help` and exits 0", async (name) => {
    const { out, error } = await parse([name, "--help"]);
    expect(error).toMatchObject({ code: "commander.helpDisplayed", exitCode: 0 });
    expect(out).toContain(`Usage: photo-edit-bot ${name} [options]`);
  });

  it("rejects an unknown subcommand, suggesting the near one", async () => {
    const { err, error } = await parse(["strat"]);
    expect(error).toMatchObject({ code: "commander.unknownCommand", exitCode: 1 });
    expect(err).toBe("error: unknown command 'strat'\n(Did you mean start?)\n");
  });

  it("rejects an unknown flag on a subcommand", async () => {
    const { err, error } = await parse(["start", "--turbo"]);
    expect(error).toMatchObject({ code: "commander.unknownOption", exitCode: 1 });
    expect(err).toBe("error: unknown option '--turbo'\n");
  });

  it.each([
    ["edit", "imagic"],
    ["edit", "concept"],
    ["edit", "swap"],
    ["bench", "imagic"],
    ["bench", "photoswap"],
  ])("`%s %s --train-dtype bf16` is refused, naming the choices", async (...command) => {
    const { err, error } = await parse([...command, "--train-dtype", "bf16"]);
    expect(error).toMatchObject({ code: "commander.invalidArgument", exitCode: 1 });
    expect(err).toBe(
      "error: option '--train-dtype <dtype>' argument 'bf16' is invalid. Allowed choices are auto, fp32, fp16.\n",
    );
  });

  it("exits 1 with one line for an unknown subcommand when run as a program", async () => {
    const { code, stdout, stderr } = await runCli(["frobnicate"]);
    expect(code).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toBe("error: unknown command 'frobnicate'\n");
  });

  it("stops on a malformed setting with one line naming it, never echoing a secret", async () => {
    const { code, stderr } = await runCli(["start"], {
      ENGINE_HTTP_PORT: "http",
      DISCORD_TOKEN: "super secret token",
      STATE_DIR: "/nonexistent/never-created",
    });
    expect(code).toBe(1);
    expect(stderr).toBe(
      'Invalid configuration: ENGINE_HTTP_PORT must be a TCP port 0-65535 (0 disables) (got "http"); ' +
        "DISCORD_TOKEN must be the bot token from the Discord developer portal\n",
    );
  });
});
