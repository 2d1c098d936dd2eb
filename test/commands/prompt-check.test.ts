// The bot's prompt check before queuing: the engine's own check with the model's tokenizer, read from this
// host's files; while they are not here, every prompt passes to the engine's check at job start.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandRequest } from "../../src/commands/chat.js";
import { PromptCheck } from "../../src/commands/prompt-check.js";
import { loadConfig } from "../../src/config.js";
import { openCheckpoint } from "../../src/engine/models/checkpoint.js";
import { childLogger } from "../../src/log.js";
import { scratchCopies } from "../helpers/model-files.js";
import { tempDirs } from "../helpers/temp-dirs.js";
import { type ConsoleCommands, consoleCommands, pngAttachment } from "./memory-adapter.js";

const SD1 = "test/fixtures/models/sd1/model";
const log = childLogger("test");
/** 90 words: past the 75 tokens CLIP reads with any tokenizer, within the 500 characters. */
const LONG = Array.from({ length: 90 }, (_, i) => ["red", "cat", "big", "dog"][i % 4]).join(" ");
const config = (env: Record<string, string>) => loadConfig({ STATE_DIR: ".state/test-prompt-check", ...env });
const copy = scratchCopies("prompt-check-test-");
const emptyDir = tempDirs("prompt-check-cache-");

describe("PromptCheck", () => {
  it("refuses with the engine's message what the engine would refuse, from the model's own files", async () => {
    const check = PromptCheck.forModel(config({ MODEL: SD1 }), log);
    await expect(check.check(LONG)).rejects.toThrow(
      /^`prompt` is longer than the 75 tokens CLIP reads: it would be cut after/,
    );
    await expect(check.check("<|endoftext|>")).rejects.toThrow("`prompt` is empty");
    await expect(check.check("a photo of a dog")).resolves.toBeUndefined();
  });

  it("uses the model's tokenizer, not a stock one: an added token is one token", async () => {
    const dir = copy(SD1);
    const { tokenizer } = openCheckpoint(dir);
    // 74 words, each one token with the added "<x>"; in stock BPE "<x>" is several.
    const prompt = Array<string>(74).fill("<x>").join(" ");
    expect(tokenizer.encode(prompt).truncated).toBe(true);
    writeFileSync(join(dir, "tokenizer", "added_tokens.json"), JSON.stringify({ "<x>": 49408 }));
    await expect(PromptCheck.forModel(config({ MODEL: dir }), log).check(prompt)).resolves.toBeUndefined();
    await expect(PromptCheck.forModel(config({ MODEL: SD1 }), log).check(prompt)).rejects.toThrow(
      /longer than the 75 tokens/,
    );
  });

  it("passes every prompt while the model is not on this host, and looks again a minute later", async () => {
    let now = 0;
    let opens = 0;
    const { tokenizer } = openCheckpoint(SD1);
    let available = false;
    const check = new PromptCheck(
      async () => {
        opens++;
        if (!available) throw new Error("not in the cache");
        return tokenizer;
      },
      log,
      () => now,
    );
    // Commands arriving together share one look.
    await Promise.all([check.check(LONG), check.check(LONG)]);
    expect(opens).toBe(1);
    available = true;
    now = 59_999;
    await expect(check.check(LONG)).resolves.toBeUndefined();
    expect(opens).toBe(1);
    now = 60_000;
    await expect(check.check(LONG)).rejects.toThrow(/longer than the 75 tokens/);
    await expect(check.check(LONG)).rejects.toThrow(/longer than the 75 tokens/);
    expect(opens).toBe(2);
  });

  it("a hub model not in the cache is looked for there only, never downloaded", async () => {
    const check = PromptCheck.forModel(
      config({ MODEL: "someone/some-model", MODEL_CACHE_DIR: emptyDir(), HF_ENDPOINT: "http://127.0.0.1:9" }),
      log,
    );
    await expect(check.check(LONG)).resolves.toBeUndefined();
  });
});

describe("ChatCommands with a prompt check", () => {
  let c: ConsoleCommands;
  const channel = { channel: "console" };

  beforeAll(async () => {
    c = await consoleCommands({ prompts: PromptCheck.forModel(config({ MODEL: SD1 }), log) });
  });
  afterAll(() => c.close());

  it("refuses an /imagic prompt CLIP would cut before anything is stored or queued", async () => {
    const request: CommandRequest = {
      command: "imagic",
      userId: "ann",
      conversation: channel,
      options: { prompt: LONG },
      attachments: [pngAttachment("image", "photo.png")],
    };
    await c.commands.handleCommand(request, c.adapter.reply(channel));
    expect(c.adapter.privateReplies.at(-1)).toMatch(/^⚠️ `prompt` is longer than the 75 tokens CLIP reads/);
    expect(c.adapter.messages).toHaveLength(0);
    expect(await c.queue.queue.count()).toBe(0);
    expect(await c.h.blobs.usage("ann")).toBe(0);
  });
});
