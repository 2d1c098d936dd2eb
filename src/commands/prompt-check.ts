// The engine's prompt check (CLIP reads 75 tokens), run by a chat bot before it queues an /imagic job:
// a prompt CLIP would cut is refused at once, instead of when its job starts, which behind a busy queue
// is minutes later. It needs the model's own tokenizer (added tokens, SD 2.x's "!" pad change what a
// prompt costs), which the bot reads from the model's files when they are on its host: a local model, or
// a hub model the engine has downloaded into the shared cache. Until they are, the engine's check at
// job start is the only one.
import type { Config } from "../config.js";
import { type ModelSettings, modelLoadOptions } from "../engine/load-options.js";
import type { ClipTokenizer } from "../engine/models/tokenizer.js";
import { openModel } from "../engine/open-model.js";
import { checkPrompt } from "../engine/pipelines/prompt.js";
import { UserFacingError } from "../errors.js";
import type { Logger } from "../log.js";

/** How long the bot waits before it looks for the model's files again after not finding them. */
const RETRY_MS = 60_000;

export class PromptCheck {
  private tokenizer: ClipTokenizer | undefined;
  private loading: Promise<ClipTokenizer | undefined> | undefined;
  private retryAt = 0;
  private lastMiss: string | undefined;

  constructor(
    private readonly open: () => Promise<ClipTokenizer>,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Reads MODEL's tokenizer as the engine opens the model, from this host's files only (no download). */
  static forModel(config: ModelSettings & Pick<Config, "model">, log: Logger): PromptCheck {
    return new PromptCheck(async () => {
      const options = { ...modelLoadOptions(config), offline: true };
      const opened = await openModel(config.model, options, undefined, "auto");
      await opened.release();
      return opened.checkpoint.tokenizer;
    }, log);
  }

  /** Throws the engine's UserFacingError for a prompt it would refuse; passes any prompt while it cannot tell. */
  async check(prompt: string): Promise<void> {
    const tokenizer = await this.load();
    if (!tokenizer) return;
    try {
      checkPrompt(tokenizer, prompt);
    } catch (err) {
      if (!(err instanceof UserFacingError)) throw err;
      // Named as the option it is about, as a command's other refusals are (Slack shows it under the field).
      throw new UserFacingError(err.message.replace(/^the prompt /, "`prompt` "));
    }
  }

  private load(): Promise<ClipTokenizer | undefined> {
    if (this.tokenizer || this.now() < this.retryAt) return Promise.resolve(this.tokenizer);
    this.loading ??= this.open()
      .then((tokenizer) => {
        this.tokenizer = tokenizer;
        this.log.info("prompts are measured with the model's tokenizer before they are queued");
        return tokenizer;
      })
      .catch((err: unknown) => {
        this.retryAt = this.now() + RETRY_MS;
        const reason = (err as Error).message;
        // Said once per reason, not on every command while the model downloads.
        if (reason !== this.lastMiss) {
          this.lastMiss = reason;
          this.log.info(
            { reason },
            "the model's tokenizer is not readable on this host yet: prompts are measured when their job starts",
          );
        }
        return undefined;
      })
      .finally(() => {
        this.loading = undefined;
      });
    return this.loading;
  }
}
