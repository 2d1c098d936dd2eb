// The prompt check every Imagic request passes: the engine runs it when a job starts, and a chat bot
// that can read the model's tokenizer runs it before it queues anything (src/commands/prompt-check.ts).
import { UserFacingError } from "../../errors.js";
import { MAX_PROMPT_LENGTH } from "../../spec/request.js";
import type { ClipTokenizer } from "../models/tokenizer.js";

/**
 * The prompt as CLIP will read it, or a UserFacingError: empty, or longer than the 75 tokens CLIP reads
 * (the message shows where it would be cut).
 */
export function checkPrompt(tokenizer: ClipTokenizer, prompt: string): string {
  const text = prompt.trim().replace(/\s+/g, " ");
  const empty = "the prompt is empty: describe the photo as it should look after the edit";
  if (text.length === 0) throw new UserFacingError(empty);
  if (text.length > MAX_PROMPT_LENGTH) {
    throw new UserFacingError(
      `the prompt is ${text.length} characters; the limit is ${MAX_PROMPT_LENGTH} (CLIP reads about 75 words)`,
    );
  }
  // The tokenizer splits "<|startoftext|>" and "<|endoftext|>" out whole: a prompt of nothing else
  // reads to CLIP as the empty one.
  const { bosId, eosId } = tokenizer;
  const content = tokenizer.encode(text);
  if (content.ids.slice(1, content.length - 1).every((id) => id === bosId || id === eosId))
    throw new UserFacingError(`${empty} (it holds only the text encoder's start and end markers)`);
  if (!content.truncated) return text;
  // The longest run of leading words that still fits, found by bisection over the word count.
  const words = text.split(" ");
  let lo = 0;
  let hi = words.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (tokenizer.encode(words.slice(0, mid).join(" ")).truncated) hi = mid - 1;
    else lo = mid;
  }
  const kept = words.slice(0, lo).join(" ");
  const dropped = words.slice(lo).join(" ");
  throw new UserFacingError(
    `the prompt is longer than the 75 tokens CLIP reads: it would be cut after "${short(kept, true)}", dropping "${short(dropped, false)}" (${words.length - lo} of ${words.length} words). Shorten it.`,
  );
}

function short(s: string, tail: boolean): string {
  if (s.length <= 60) return s;
  return tail ? `…${s.slice(-60)}` : `${s.slice(0, 60)}…`;
}
