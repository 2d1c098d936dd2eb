/**
 * Which target token takes which source token's cross-attention map, and which tokens spell a word:
 * Prompt-to-Prompt's `seq_aligner.get_mapper` and `ptp_utils.get_word_inds`, which the official Photoswap
 * code uses unchanged (../shared/PHOTOSWAP.md §5, §6), over our CLIP tokenizer.
 */
import { UserFacingError } from "../../errors.js";
import type { Encoding } from "../models/tokenizer.js";

/** What the alignment needs of a tokenizer. */
export interface PromptTokenizer {
  encode(text: string): Encoding;
  decodeToken(id: number): string;
}

export interface TokenMapper {
  /** For each of the 77 target slots, the source slot whose map it takes (−1: none; then alpha is 0). */
  mapper: number[];
  /** 1 where the target slot takes the source map, 0 where it keeps its own. */
  alphas: number[];
}

// Needleman–Wunsch scores of seq_aligner.ScoreParams(gap=0, match=1, mismatch=-1).
const GAP = 0;
const MATCH = 1;
const MISMATCH = -1;
const LEFT = 1;
const UP = 2;
const DIAG = 3;

/**
 * get_mapper(source, target): a global alignment of the two token sequences (bos … eos, unpadded) where a
 * gap costs nothing and a mismatch −1, so only identical tokens are ever paired; ties prefer left (a
 * target token of its own), then up (a source token dropped), then diagonal. Slots past the target's
 * tokens map to the same slot of the source.
 */
export function alignTokens(source: readonly number[], target: readonly number[], length = 77): TokenMapper {
  const n = source.length;
  const m = target.length;
  if (m > length) throw new Error(`alignTokens: the target has ${m} tokens, more than ${length}`);
  const score = Array.from({ length: n + 1 }, (_, i) =>
    Array.from({ length: m + 1 }, (_, j) => (i === 0 ? j * GAP : j === 0 ? i * GAP : 0)),
  );
  const trace = Array.from({ length: n + 1 }, (_, i) =>
    Array.from({ length: m + 1 }, (_, j) => (i === 0 ? (j === 0 ? 4 : LEFT) : j === 0 ? UP : 0)),
  );
  for (let i = 1; i <= n; i++) {
    const row = score[i] as number[];
    const above = score[i - 1] as number[];
    for (let j = 1; j <= m; j++) {
      const left = (row[j - 1] as number) + GAP;
      const up = (above[j] as number) + GAP;
      const diag = (above[j - 1] as number) + (source[i - 1] === target[j - 1] ? MATCH : MISMATCH);
      const best = Math.max(left, up, diag);
      row[j] = best;
      (trace[i] as number[])[j] = best === left ? LEFT : best === up ? UP : DIAG;
    }
  }
  const pairs: Array<[number, number]> = [];
  let i = n;
  let j = m;
  while (i > 0 || j > 0) {
    const t = (trace[i] as number[])[j];
    if (t === DIAG) {
      i--;
      j--;
      pairs.push([j, i]);
    } else if (t === LEFT) {
      j--;
      pairs.push([j, -1]);
    } else if (t === UP) i--;
    else break;
  }
  pairs.reverse();
  const mapper = Array.from({ length }, (_, k) => k);
  const alphas = new Array<number>(length).fill(1);
  pairs.forEach(([, s], k) => {
    mapper[k] = s;
    alphas[k] = s === -1 ? 0 : 1;
  });
  return { mapper, alphas };
}

/** The prompt's token ids from bos to eos (no padding); refuses a prompt the 77 positions cannot hold. */
export function promptTokens(tok: PromptTokenizer, text: string, what: string): number[] {
  const e = tok.encode(text);
  if (e.truncated) {
    throw new UserFacingError(
      `the ${what} "${text}" is longer than the ${e.ids.length - 2} tokens the text encoder reads; shorten it`,
    );
  }
  return e.ids.slice(0, e.length);
}

/**
 * get_word_inds(text, word): the positions (bos = 0) of the tokens of every space-separated word of
 * `text` equal to `word` — an exact match, so "woman," is not "woman".
 *
 * Each word's tokens are counted by tokenizing the word alone: CLIP's pre-tokenizer never joins text
 * across a space, so the prompt's tokens are the words' tokens one after the other. The reference instead
 * walks the prompt's tokens by the length of each one's decoded text; that agrees wherever a token
 * decodes to whole characters, but a character that BPE splits into byte tokens ("猫", "ﬁ": each byte
 * decodes to one "�") throws its count off, and every word after it is then found at the wrong tokens
 * ("a 猫 on a sofa" gave "sofa" the tokens of "a" and "sofa"). Should the counts ever not add up to the
 * prompt's tokens (text cleanup that spans words), the reference's walk is used as it is.
 */
export function wordIndices(tok: PromptTokenizer, text: string, word: string): number[] {
  const words = text.split(" ");
  const wanted = new Set(words.flatMap((w, i) => (w === word ? [i] : [])));
  if (wanted.size === 0) return [];
  const e = tok.encode(text);
  const tokens = e.length - 2;
  const counts = words.map((w) => {
    const one = tok.encode(w);
    return one.length - 2;
  });
  if (counts.reduce((a, b) => a + b, 0) === tokens) {
    const out: number[] = [];
    let at = 1;
    counts.forEach((n, i) => {
      if (wanted.has(i)) for (let k = 0; k < n; k++) out.push(at + k);
      at += n;
    });
    return out;
  }
  const pieces = e.ids.slice(1, e.length - 1).map((id) => [...tok.decodeToken(id).replace(/^#+|#+$/g, "")]);
  const out: number[] = [];
  let ptr = 0;
  let len = 0;
  for (let i = 0; i < pieces.length && ptr < words.length; i++) {
    len += (pieces[i] as string[]).length;
    if (wanted.has(ptr)) out.push(i + 1);
    if (len >= [...(words[ptr] as string)].length) {
      ptr++;
      len = 0;
    }
  }
  return out;
}
