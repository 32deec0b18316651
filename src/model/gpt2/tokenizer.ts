import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../../errors.js';
import { BYTE_TO_CHAR, CHAR_TO_BYTE } from '../byte-level.js';
import type { EncodeOptions, Tokenizer } from '../tokenizer.js';

/**
 * GPT-2's byte-level BPE (Radford et al. 2019), read from a checkpoint's `vocab.json` + `merges.txt`
 * or `tokenizer.json`. Text is split by GPT-2's pre-tokenizer pattern, each piece's UTF-8 bytes are
 * mapped to printable characters, then merged by rank.
 */

export const ENDOFTEXT = '<|endoftext|>';

// Pre-tokenizer pattern. `\s` is spelled \p{White_Space}, the Unicode whitespace class that Hugging
// Face's tokenizers use (JavaScript's `\s` also matches U+FEFF and misses U+0085).
const PATTERN =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

const utf8 = new TextEncoder();
// Invalid sequences become U+FFFD (as HF's errors="replace"); a leading U+FEFF is text, not a BOM.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });

export class Gpt2Tokenizer implements Tokenizer {
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`, GPT-2's BOS and EOS. */
  readonly eosId: number;
  /** GPT-2 has one special token: BOS is `<|endoftext|>` too. */
  readonly bosId: number;
  /** Hugging Face's GPT-2 tokenizer adds no BOS. */
  readonly addBos = false;
  /** `Ġ`, a space in the byte-level alphabet. */
  readonly spaceId: number | undefined;
  private readonly idToToken: string[];
  private readonly ranks: Map<string, number>;
  private readonly special: Map<string, number>;
  private readonly specialPattern: RegExp | undefined;
  private readonly cache = new Map<string, number[]>();

  constructor(
    private readonly vocab: Map<string, number>,
    merges: [string, string][],
    special: Map<string, number>,
  ) {
    this.idToToken = [];
    for (const [tok, id] of vocab) this.idToToken[id] = tok;
    this.vocabSize = this.idToToken.length;
    this.ranks = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.special = special;
    const eos = special.get(ENDOFTEXT) ?? vocab.get(ENDOFTEXT);
    if (eos === undefined) throw new Error(`vocabulary has no ${ENDOFTEXT}`);
    this.eosId = eos;
    this.bosId = eos;
    this.spaceId = vocab.get('\u0120');
    const escaped = [...special.keys()].map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.specialPattern = escaped.length ? new RegExp(`(${escaped.join('|')})`) : undefined;
  }

  /** Loads `vocab.json` + `merges.txt`, or else `tokenizer.json`, from a checkpoint directory. */
  static fromDir(dir: string): Gpt2Tokenizer {
    const vocabFile = join(dir, 'vocab.json');
    const mergesFile = join(dir, 'merges.txt');
    const tokFile = join(dir, 'tokenizer.json');
    if (existsSync(vocabFile) && existsSync(mergesFile)) {
      const vocab = readJson(vocabFile) as Record<string, number>;
      if (typeof vocab !== 'object' || vocab === null) throw new CheckpointError(vocabFile, 'expected a JSON object');
      const merges = parseMerges(mergesFile, readFileSync(mergesFile, 'utf8').split('\n'));
      const v = new Map(Object.entries(vocab));
      const special = new Map<string, number>();
      if (v.has(ENDOFTEXT)) special.set(ENDOFTEXT, v.get(ENDOFTEXT)!);
      return new Gpt2Tokenizer(v, merges, special);
    }
    if (existsSync(tokFile)) {
      const j = readJson(tokFile) as {
        model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
        added_tokens?: { id: number; content: string; special?: boolean }[];
      };
      if (j.model?.type !== 'BPE' || !j.model.vocab || !Array.isArray(j.model.merges)) {
        throw new CheckpointError(tokFile, 'expected a byte-level BPE model with vocab and merges');
      }
      const merges = j.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' ')));
      const special = new Map<string, number>();
      for (const t of j.added_tokens ?? []) special.set(t.content, t.id);
      const v = new Map(Object.entries(j.model.vocab));
      for (const [c, id] of special) v.set(c, id);
      return new Gpt2Tokenizer(v, parseMerges(tokFile, merges), special);
    }
    throw new CheckpointError(
      join(dir, 'vocab.json'),
      'missing tokenizer (need vocab.json + merges.txt, or tokenizer.json)',
    );
  }

  /** Encodes text to token ids. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    const parts = opts.allowSpecial === false || !this.specialPattern ? [text] : text.split(this.specialPattern);
    for (const part of parts) {
      const sp = this.special.get(part);
      if (sp !== undefined && opts.allowSpecial !== false) {
        ids.push(sp);
        continue;
      }
      for (const m of part.matchAll(PATTERN)) {
        for (const id of this.bpe(m[0])) ids.push(id);
      }
    }
    return ids;
  }

  /** Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: readonly number[]): string {
    return utf8Decoder.decode(this.bytes(ids));
  }

  /** The raw bytes of a token sequence (a token may hold part of a UTF-8 character). */
  bytes(ids: readonly number[]): Uint8Array {
    const out: number[] = [];
    for (const id of ids) {
      const tok = this.idToToken[id];
      if (tok === undefined)
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      if (this.isSpecialId(id)) {
        for (const b of utf8.encode(tok)) out.push(b);
        continue;
      }
      for (const ch of tok) out.push(CHAR_TO_BYTE.get(ch) ?? 0x3f);
    }
    return Uint8Array.from(out);
  }

  /** The token's string form in the vocabulary (e.g. `Ġworld`). */
  token(id: number): string | undefined {
    return this.idToToken[id];
  }

  private isSpecialId(id: number): boolean {
    for (const v of this.special.values()) if (v === id) return true;
    return false;
  }

  /** Byte-level BPE of one pre-tokenized piece: repeatedly merge the lowest-ranked adjacent pair. */
  private bpe(piece: string): number[] {
    const cached = this.cache.get(piece);
    if (cached) return cached;
    let word = Array.from(utf8.encode(piece), (b) => BYTE_TO_CHAR[b]);
    while (word.length > 1) {
      let best = Infinity;
      let bestAt = -1;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < best) {
          best = r;
          bestAt = i;
        }
      }
      if (bestAt < 0) break;
      const a = word[bestAt];
      const b = word[bestAt + 1];
      const merged: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (i < word.length - 1 && word[i] === a && word[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else {
          merged.push(word[i]);
        }
      }
      word = merged;
    }
    const ids = word.map((t) => {
      const id = this.vocab.get(t);
      if (id === undefined) throw new Error(`BPE produced "${t}", which is not in the vocabulary`);
      return id;
    });
    if (this.cache.size < 100_000) this.cache.set(piece, ids);
    return ids;
  }
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(file, `cannot read as JSON (${(e as Error).message})`);
  }
}

function parseMerges(file: string, lines: string[]): [string, string][] {
  const merges: [string, string][] = [];
  for (const [i, line] of lines.entries()) {
    if (line.startsWith('#version') || line.trim() === '') continue;
    const parts = line.split(' ');
    if (parts.length !== 2) throw new CheckpointError(file, `line ${i + 1} is not a merge "a b"`);
    merges.push([parts[0], parts[1]]);
  }
  return merges;
}
