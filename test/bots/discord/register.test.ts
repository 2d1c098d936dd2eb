// `bot register`: the slash commands as Discord receives them, in a guild or globally, and the
// messages for a refused token or an unknown application.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeDiscord } from "../../../src/bots/discord/fake/server.js";
import { registerCommands } from "../../../src/bots/discord/register.js";

let fake: FakeDiscord;
beforeAll(async () => {
  fake = await FakeDiscord.start();
});
afterAll(() => fake.close());

type Option = {
  name: string;
  type: number;
  required?: boolean;
  choices?: unknown[];
  max_value?: number;
  max_length?: number;
  file_types?: string[];
};
type Command = { name: string; options?: Option[]; contexts?: number[] };

describe("registerCommands", () => {
  it("registers every command in the guild, with typed, bounded options", async () => {
    const done = await registerCommands({
      token: fake.token,
      applicationId: fake.applicationId,
      guildId: fake.guildId,
      apiUrl: fake.apiUrl,
    });
    expect(done).toEqual({ scope: "guild", names: ["imagic", "swap", "cancel", "queue", "help"] });
    const commands = fake.registered.get(fake.guildId) as Command[];
    const imagic = commands.find((c) => c.name === "imagic");
    expect(imagic?.options?.map((o) => [o.name, o.type, o.required ?? false])).toEqual([
      ["image", 11, true],
      ["prompt", 3, true],
      ["preset", 3, false],
      ["eta", 10, false],
      ["seeds", 3, false],
      ["size", 3, false],
    ]);
    expect(imagic?.options?.find((o) => o.name === "eta")?.max_value).toBe(1.5);
    expect(imagic?.options?.find((o) => o.name === "prompt")?.max_length).toBe(500);
    expect(imagic?.options?.find((o) => o.name === "preset")?.choices).toHaveLength(3);
    const swap = commands.find((c) => c.name === "swap");
    expect(
      swap?.options?.filter((o) => o.type === 11).map((o) => `${o.name}${o.required ? "!" : ""}`),
    ).toEqual(["source!", "reference1!", "reference2", "reference3", "reference4", "reference5"]);
    // Every attachment option asks Discord's file picker for images.
    for (const command of commands) {
      for (const option of (command.options ?? []).filter((o) => o.type === 11)) {
        expect(option.file_types).toEqual(["image"]);
      }
    }
    // The swap strengths are whole steps: integer options (type 4), 0 to 50.
    expect(
      swap?.options?.filter((o) => o.name.endsWith("_steps")).map((o) => [o.name, o.type, o.max_value]),
    ).toEqual([
      ["self_output_steps", 4, 50],
      ["self_map_steps", 4, 50],
      ["cross_map_steps", 4, 50],
    ]);
    // Several strengths at once: φ/M/A triples as text (type 3), before `seeds`; then `size`, as /imagic's.
    expect(swap?.options?.slice(-3).map((o) => [o.name, o.type, o.required ?? false, o.max_length])).toEqual([
      ["strengths", 3, false, 200],
      ["seeds", 3, false, 100],
      ["size", 3, false, 20],
    ]);
    // Usable in servers and in the bot's DMs.
    expect(imagic?.contexts).toEqual([0, 1]);
  });

  it("registers globally without a guild", async () => {
    const done = await registerCommands({
      token: fake.token,
      applicationId: fake.applicationId,
      apiUrl: fake.apiUrl,
    });
    expect(done.scope).toBe("global");
    expect((fake.registered.get("global") as Command[]).map((c) => c.name)).toContain("swap");
  });

  it("says which setting Discord refused", async () => {
    await expect(
      registerCommands({ token: "wrong", applicationId: fake.applicationId, apiUrl: fake.apiUrl }),
    ).rejects.toThrow(/Discord refused DISCORD_TOKEN \(401 Unauthorized\)/);
    await expect(
      registerCommands({ token: fake.token, applicationId: "1234567890123456789", apiUrl: fake.apiUrl }),
    ).rejects.toThrow(/Discord does not know DISCORD_APPLICATION_ID 1234567890123456789/);
  });
});
