/**
 * CLIP's byte-level BPE tokenizer, computing what transformers' CLIPTokenizer gives for Stable Diffusion
 * prompts (its tokenizers-backed path, which is also its path without ftfy):
 *   normalize  NFC, runs of whitespace → one space, lower-case;
 *   split      special tokens out as they are, then the CLIP regex: 's 't 're 've 'm 'll 'd, letter runs,
 *              single digits, runs of other non-space characters;
 *   encode     each piece's UTF-8 bytes as GPT-2's printable byte alphabet, the last char marked `</w>`,
 *              merged pairwise by merges.txt rank;
 *   frame      <|startoftext|> … <|endoftext|>, truncated to model_max_length (77) and padded with the
 *              checkpoint's pad token (`<|endoftext|>` in SD 1.x, `!` = id 0 in SD 2.x).
 * Sources: tokenizer/tokenizer.json when present, else vocab.json + merges.txt; special tokens from
 * tokenizer_config.json / special_tokens_map.json (the map overriding a legacy config, as transformers).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ModelFileError } from "./errors.js";
import { readModelJson, readModelText } from "./files.js";

export interface Encoding {
  /** Exactly maxLength ids: bos, tokens, eos, padding. */
  ids: number[];
  /** The prompt had more tokens than fit; the tail was dropped. */
  truncated: boolean;
  /** Ids before padding (bos and eos included). */
  length: number;
}

const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\p{White_Space}\p{L}\p{N}]+/gu;
const WHITESPACE = /\p{White_Space}+/gu;
const END_OF_WORD = "</w>";

/** GPT-2's reversible map from bytes to printable unicode characters (so BPE works on visible strings). */
function byteAlphabet(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    map[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  }
  return map;
}
const BYTE_CHARS = byteAlphabet();
const CHAR_BYTES = new Map(BYTE_CHARS.map((c, b) => [c, b]));

interface Specials {
  bos: string;
  eos: string;
  pad: string;
  unk: string;
  maxLength: number;
  /**
   * Tokens added to the vocabulary (textual inversion's placeholders saved with the pipeline), by content:
   * tokenizer_config.json's `added_tokens_decoder`, else added_tokens.json, and tokenizer.json's
   * `added_tokens` where that file is read.
   */
  added: ReadonlyMap<string, number>;
}

export class ClipTokenizer {
  private readonly cache = new Map<string, number[]>();
  /** id → token, built on first decodeToken(). */
  private tokens?: Map<number, string>;
  private readonly specialPattern: RegExp;
  /** Ids of the tokens split out of the text whole (bos, eos, added tokens), by their normalized text. */
  private readonly wholeIds = new Map<string, number>();
  /** Added tokens by content (decodeToken). */
  private readonly added: ReadonlyMap<string, number>;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkId: number;
  readonly maxLength: number;

  private constructor(
    private readonly vocab: ReadonlyMap<string, number>,
    private readonly ranks: ReadonlyMap<string, number>,
    specials: Specials,
    source: string,
  ) {
    const id = (role: string, token: string) => {
      const v = specials.added.get(token) ?? vocab.get(token);
      if (v === undefined)
        throw new ModelFileError(
          source,
          `the ${role} token ${JSON.stringify(token)} is not in the vocabulary`,
        );
      return v;
    };
    this.bosId = id("bos", specials.bos);
    this.eosId = id("eos", specials.eos);
    this.padId = id("pad", specials.pad);
    this.unkId = id("unk", specials.unk);
    this.maxLength = specials.maxLength;
    // transformers splits added tokens out of the text before BPE, each as its own id ("a <cat-toy> toy"
    // → a, <cat-toy>, toy). tokenizers matches added tokens that are `normalized` (its default for
    // non-special ones) against the normalized text, so their content is normalized the same way here;
    // longest first, as its leftmost-longest matching. Every special token is such an added token, the
    // pad token included: SD 2.x's pad "!" is split out of a prompt too, so "a cat!!" ends in two ids 0
    // where BPE alone gives "!!</w>" (diffusers issue 4153 shows it).
    for (const [token, tokenId] of [
      [specials.bos, this.bosId],
      [specials.eos, this.eosId],
      [specials.pad, this.padId],
      [specials.unk, this.unkId],
    ] as const)
      this.wholeIds.set(normalize(token), tokenId);
    for (const [token, tokenId] of specials.added)
      if (token !== "") this.wholeIds.set(normalize(token), tokenId);
    const escaped = [...this.wholeIds.keys()]
      .sort((a, b) => b.length - a.length)
      .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    this.specialPattern = new RegExp(`(${escaped.join("|")})`);
    this.added = specials.added;
  }

  /**
   * Loads `dir` (a checkpoint's tokenizer/ folder). `maxLength` caps model_max_length (the text encoder's
   * max_position_embeddings; some checkpoints declare a huge model_max_length). `padToken` replaces the
   * folder's own (the bundled vocabulary serves SD 1.x, which pads with `<|endoftext|>`, and SD 2.x: `!`).
   */
  static fromFolder(dir: string, maxLength = 77, padToken?: string): ClipTokenizer {
    const declared = readSpecials(dir, maxLength);
    const specials = padToken === undefined ? declared : { ...declared, pad: padToken };
    const jsonFile = join(dir, "tokenizer.json");
    if (existsSync(jsonFile)) {
      const { vocab, merges, added } = readTokenizerJson(jsonFile);
      return new ClipTokenizer(
        vocab,
        rankMerges(merges, vocab, jsonFile),
        { ...specials, added: new Map([...added, ...specials.added]) },
        jsonFile,
      );
    }
    const vocabFile = join(dir, "vocab.json");
    const mergesFile = join(dir, "merges.txt");
    const vocab = readVocab(vocabFile, readModelJson(vocabFile));
    return new ClipTokenizer(
      vocab,
      rankMerges(readMergesTxt(mergesFile), vocab, mergesFile),
      specials,
      vocabFile,
    );
  }

  /** Token ids of the prompt, without bos/eos/padding. */
  tokenize(text: string): number[] {
    return this.pieces(text).flatMap((p) => p.ids);
  }

  /**
   * Positions in encode(text).ids (bos = 0) of the tokens that spell `word` wherever it occurs as whole
   * pre-tokenizer pieces ("cat" in "a cat's toy", not in "catalogue"); a multi-word phrase matches as a
   * run. For cross-attention maps of a prompt's subject word. Positions past truncation are left out.
   */
  positionsOf(text: string, word: string): number[] {
    const pieces = this.pieces(text);
    const wanted = this.pieces(word).map((p) => p.text);
    if (wanted.length === 0) return [];
    const starts: number[] = [];
    let pos = 1;
    for (const p of pieces) {
      starts.push(pos);
      pos += p.ids.length;
    }
    const out: number[] = [];
    for (let i = 0; i + wanted.length <= pieces.length; i++) {
      if (!wanted.every((w, k) => pieces[i + k]?.text === w)) continue;
      for (let k = 0; k < wanted.length; k++) {
        const piece = pieces[i + k] as { ids: number[] };
        for (let j = 0; j < piece.ids.length; j++) out.push((starts[i + k] as number) + j);
      }
    }
    return out.filter((p) => p < this.maxLength - 1);
  }

  /**
   * One token's text as CLIPTokenizer.decode([id]) gives it: its bytes as UTF-8 (invalid sequences as
   * U+FFFD), the end-of-word mark as a space, trimmed ("cat</w>" → "cat").
   */
  decodeToken(id: number): string {
    if (!this.tokens) this.tokens = new Map([...this.vocab, ...this.added].map(([t, i]) => [i, t]));
    const token = this.tokens.get(id);
    if (token === undefined) throw new Error(`token id ${id} is not in the vocabulary`);
    const bytes = Uint8Array.from(Array.from(token, (c) => CHAR_BYTES.get(c) ?? 0x3f));
    return new TextDecoder().decode(bytes).replaceAll(END_OF_WORD, " ").trim();
  }

  /** The prompt's pre-tokenizer pieces (normalized text) with their token ids. */
  private pieces(text: string): Array<{ text: string; ids: number[] }> {
    const out: Array<{ text: string; ids: number[] }> = [];
    for (const [i, part] of normalize(text).split(this.specialPattern).entries()) {
      // split() with a capture group alternates text and tokens taken whole.
      if (i % 2 === 1) {
        out.push({ text: part, ids: [this.wholeIds.get(part) as number] });
        continue;
      }
      for (const match of part.matchAll(SPLIT)) out.push({ text: match[0], ids: this.bpe(match[0]) });
    }
    return out;
  }

  /** The model input: maxLength ids, truncated and padded as CLIPTokenizer(padding="max_length", truncation=True). */
  encode(text: string): Encoding {
    const tokens = this.tokenize(text);
    const room = this.maxLength - 2;
    const kept = tokens.slice(0, room);
    const ids = [this.bosId, ...kept, this.eosId];
    const length = ids.length;
    while (ids.length < this.maxLength) ids.push(this.padId);
    return { ids, truncated: tokens.length > room, length };
  }

  private bpe(piece: string): number[] {
    const cached = this.cache.get(piece);
    if (cached) return cached;
    const chars = Array.from(Buffer.from(piece, "utf8"), (b) => BYTE_CHARS[b] as string);
    chars[chars.length - 1] += END_OF_WORD;
    let word = chars;
    while (word.length > 1) {
      let best = -1;
      let bestRank = Number.POSITIVE_INFINITY;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const [a, b] = [word[best] as string, word[best + 1] as string];
      // Merge every occurrence of the pair, left to right, as the reference BPE does.
      const next: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (i < word.length - 1 && word[i] === a && word[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(word[i] as string);
      }
      word = next;
    }
    const ids = word.map((token) => this.vocab.get(token) ?? this.unkId);
    this.cache.set(piece, ids);
    return ids;
  }
}

/** CLIP's normalizer: NFC, runs of whitespace → one space, lower-case. */
function normalize(text: string): string {
  return text.normalize("NFC").replace(WHITESPACE, " ").toLowerCase();
}

function readVocab(file: string, json: unknown): Map<string, number> {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelFileError(file, "vocabulary is not a JSON object of token → id");
  }
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(json)) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new ModelFileError(
        file,
        `token ${JSON.stringify(token)} has id ${JSON.stringify(id)}, expected a non-negative integer`,
      );
    }
    vocab.set(token, id as number);
  }
  if (vocab.size === 0) throw new ModelFileError(file, "vocabulary is empty");
  return vocab;
}

/** merges.txt: a `#version` line, then one "left right" pair per line in rank order. */
function readMergesTxt(file: string): Array<{ pair: [string, string]; where: string }> {
  const lines = readModelText(file).split("\n");
  const merges: Array<{ pair: [string, string]; where: string }> = [];
  lines.forEach((line, i) => {
    if ((i === 0 && line.startsWith("#version")) || line.trim() === "") return;
    const parts = line.split(" ");
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      throw new ModelFileError(
        file,
        `line ${i + 1} is not a merge of two tokens: ${JSON.stringify(line.slice(0, 80))}`,
      );
    }
    merges.push({ pair: [parts[0], parts[1]], where: `line ${i + 1}` });
  });
  if (merges.length === 0) throw new ModelFileError(file, "holds no merges");
  return merges;
}

/** Ranks merges, checking each one's result is a vocabulary token (catches mismatched or damaged files). */
function rankMerges(
  merges: Array<{ pair: [string, string]; where: string }>,
  vocab: ReadonlyMap<string, number>,
  file: string,
): Map<string, number> {
  const ranks = new Map<string, number>();
  merges.forEach(({ pair: [a, b], where }, rank) => {
    if (!vocab.has(a + b)) {
      throw new ModelFileError(
        file,
        `${where}: merge "${a} ${b}" makes "${a + b}", which the vocabulary lacks (vocab and merges do not belong together)`,
      );
    }
    const key = `${a} ${b}`;
    if (!ranks.has(key)) ranks.set(key, rank);
  });
  return ranks;
}

/** tokenizer.json (the tokenizers library's format) with a BPE model. */
function readTokenizerJson(file: string): {
  vocab: Map<string, number>;
  merges: Array<{ pair: [string, string]; where: string }>;
  added: Map<string, number>;
} {
  const json = readModelJson(file) as {
    model?: { type?: unknown; vocab?: unknown; merges?: unknown };
    added_tokens?: unknown;
  } | null;
  const model = json?.model;
  if (model?.type !== undefined && model.type !== "BPE") {
    throw new ModelFileError(
      file,
      `model type ${JSON.stringify(model.type)} is not BPE; not a CLIP tokenizer`,
    );
  }
  const vocab = readVocab(file, model?.vocab);
  if (!Array.isArray(model?.merges)) throw new ModelFileError(file, "model.merges is not a list");
  const merges = model.merges.map((m: unknown, i: number) => {
    const pair = typeof m === "string" ? m.split(" ") : m;
    if (
      !Array.isArray(pair) ||
      pair.length !== 2 ||
      !pair.every((p) => typeof p === "string" && p.length > 0)
    ) {
      throw new ModelFileError(file, `model.merges[${i}] is not a pair of tokens: ${JSON.stringify(m)}`);
    }
    return { pair: pair as [string, string], where: `model.merges[${i}]` };
  });
  const added = new Map<string, number>();
  const list = Array.isArray(json?.added_tokens) ? (json.added_tokens as unknown[]) : [];
  list.forEach((t, i) => {
    const { id, content } = (t ?? {}) as { id?: unknown; content?: unknown };
    addedToken(added, file, `added_tokens[${i}]`, content, id);
  });
  return { vocab, merges, added };
}

/** Records one added token, or refuses the file naming the entry. */
function addedToken(
  added: Map<string, number>,
  file: string,
  where: string,
  content: unknown,
  id: unknown,
): void {
  if (typeof content !== "string" || !Number.isInteger(id) || (id as number) < 0) {
    throw new ModelFileError(
      file,
      `${where} is not an added token (content ${JSON.stringify(content)}, id ${JSON.stringify(id)})`,
    );
  }
  added.set(content, id as number);
}

/**
 * The added tokens as transformers reads them: a tokenizer_config.json's `added_tokens_decoder` (id →
 * AddedToken, transformers >= 4.34), else the legacy added_tokens.json (content → id).
 */
function readAddedTokens(
  dir: string,
  config: Record<string, unknown>,
  configFile: string,
): Map<string, number> {
  const added = new Map<string, number>();
  const decoder = config.added_tokens_decoder;
  if (decoder !== undefined) {
    if (typeof decoder !== "object" || decoder === null || Array.isArray(decoder)) {
      throw new ModelFileError(configFile, "added_tokens_decoder is not an object of id → token");
    }
    for (const [id, token] of Object.entries(decoder)) {
      const where = `added_tokens_decoder[${JSON.stringify(id)}]`;
      addedToken(added, configFile, where, tokenContent(token), /^\d+$/.test(id) ? Number(id) : id);
    }
    return added;
  }
  const file = join(dir, "added_tokens.json");
  if (!existsSync(file)) return added;
  const json = readModelJson(file);
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelFileError(file, "is not a JSON object of token → id");
  }
  for (const [token, id] of Object.entries(json)) addedToken(added, file, JSON.stringify(token), token, id);
  return added;
}

/** A token setting as transformers writes it: a string, or an AddedToken object with `content`. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { content?: unknown }).content === "string"
  ) {
    return (value as { content: string }).content;
  }
  return undefined;
}

function readSpecials(dir: string, maxLength: number): Specials {
  const configFile = join(dir, "tokenizer_config.json");
  const mapFile = join(dir, "special_tokens_map.json");
  const config = existsSync(configFile) ? (readModelJson(configFile) as Record<string, unknown>) : {};
  const map = existsSync(mapFile) ? (readModelJson(mapFile) as Record<string, unknown>) : {};
  // Which file wins where they disagree is transformers' rule (tokenization_utils_base._from_pretrained): a
  // tokenizer_config.json with `added_tokens_decoder` (transformers >= 4.34) was saved whole and is final;
  // without it (the legacy format) special_tokens_map.json overrides it, as older transformers did by
  // setting the map's tokens after init. Stable Diffusion 2.x ships exactly that disagreement — the
  // config's pad_token "<|endoftext|>", the map's "!" — and pads with "!".
  const [first, second] = "added_tokens_decoder" in config ? [config, map] : [map, config];
  const get = (key: string) => tokenContent(first[key]) ?? tokenContent(second[key]);
  const eos = get("eos_token") ?? "<|endoftext|>";
  const declared = Number(config.model_max_length);
  return {
    bos: get("bos_token") ?? "<|startoftext|>",
    eos,
    pad: get("pad_token") ?? eos,
    unk: get("unk_token") ?? eos,
    maxLength: Number.isFinite(declared) && declared >= 2 ? Math.min(declared, maxLength) : maxLength,
    added: readAddedTokens(dir, config, configFile),
  };
}
