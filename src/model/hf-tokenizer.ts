import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as Library } from '@huggingface/tokenizers';
import { CheckpointError } from '../errors.js';
import { CHAR_TO_BYTE } from './byte-level.js';
import { specialTokens } from './hf-special-tokens.js';
import { checkTokenizerJson, type TokenizerJson, type TokenSpelling } from './hf-tokenizer-format.js';
import type { EncodeOptions, Tokenizer } from './tokenizer.js';
import { wordSplitter } from './word-split.js';

const utf8 = new TextEncoder();
// Invalid sequences become U+FFFD; a leading U+FEFF is text, not a BOM.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * A checkpoint's Hugging Face `tokenizer.json` (Llama 2 and 3, Mistral, Qwen2, and GPT-2's own):
 * encoding through @huggingface/tokenizers, a pure-JavaScript implementation of the Rust library
 * that wrote the file, given only the components it encodes as the Rust library does
 * (hf-tokenizer-format.ts); BOS, EOS and `addBos` from the checkpoint's files (hf-special-tokens.ts).
 *
 * `bytes` and `decode` are steerd's own, from the decoder's rule for one token at a time (GPT-2's
 * byte table, or `▁` as space and `<0xNN>` byte fallback), so that a stream of tokens and their
 * whole sequence decode alike. Hugging Face's SentencePiece decoders also drop the one space at
 * the start of a sequence that their normalizer added when encoding: steerd keeps it, since the
 * tokens it decodes continue a prompt (`▁world` after "Hello" is " world").
 */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId: number;
  readonly bosId: number;
  readonly addBos: boolean;
  /** `Ġ` (byte-level) or the replacement character `▁` (SentencePiece-style), where the vocabulary has it. */
  readonly spaceId: number | undefined;
  /**
   * The model's rows of embedding (config.json's `vocab_size`) where it has more than the tokenizer
   * has tokens (Qwen2: 151936 for 151665): the ids between are padding, and decode to nothing, as
   * transformers decodes them, should a random or steered model sample one.
   */
  private readonly rows: number;
  private readonly idToToken: string[] = [];
  private readonly tokenBytes: (Uint8Array | undefined)[] = [];
  private readonly library: Library;
  /** A SentencePiece-style text cut where no merge can cross, each piece encoded alone (word-split.ts). */
  private readonly split: ((text: string) => string[]) | undefined;
  /** The same with the special tokens left out, for text that spells them; built when first needed. */
  private plainLibrary: Library | undefined;

  private constructor(
    private readonly json: TokenizerJson,
    private readonly spelling: TokenSpelling,
    dir: string,
    private readonly file: string,
  ) {
    for (const [tok, id] of Object.entries(json.model.vocab)) this.idToToken[id] = tok;
    for (const t of json.added_tokens) this.idToToken[t.id] = t.content;
    this.vocabSize = this.idToToken.length;
    this.rows = Math.max(this.vocabSize, modelRows(dir));
    this.library = build(file, json);
    this.split = wordSplitter(json);
    const ids = new Map<string, number>();
    for (const [id, tok] of this.idToToken.entries()) if (tok !== undefined) ids.set(tok, id);
    for (const t of json.added_tokens) ids.set(t.content, t.id);
    const special = specialTokens(dir, json, (t) => ids.get(t), this.vocabSize);
    this.bosId = special.bosId;
    this.eosId = special.eosId;
    this.addBos = special.addBos;
    this.spaceId = ids.get(spelling.kind === 'byte-level' ? '\u0120' : spelling.replacement);
  }

  /** Loads `tokenizer.json` (and tokenizer_config.json and config.json where present) from a checkpoint directory. */
  static fromDir(dir: string): HfTokenizer {
    const file = join(dir, 'tokenizer.json');
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new CheckpointError(file, `cannot read as JSON (${(e as Error).message})`);
    }
    const { json, spelling } = checkTokenizerJson(file, raw);
    return new HfTokenizer(json, spelling, dir, file);
  }

  /** Encodes text to token ids; never adds BOS or EOS (Hugging Face's `add_special_tokens=False`). */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const library = opts.allowSpecial === false ? this.plain() : this.library;
    const out: number[] = [];
    for (const piece of this.split?.(text) ?? [text]) {
      const { ids, tokens } = library.encode(piece, { add_special_tokens: false });
      for (const [i, id] of ids.entries()) {
        if (typeof id !== 'number')
          throw new Error(`the tokenizer produced ${JSON.stringify(tokens[i])}, which has no id`);
        out.push(id);
      }
    }
    return out;
  }

  /** Decodes ids to text: their bytes as UTF-8, where invalid sequences become U+FFFD. */
  decode(ids: readonly number[]): string {
    return utf8Decoder.decode(this.bytes(ids));
  }

  /** The raw bytes of a token sequence, each token's by the decoder's rule (a token may hold part of a UTF-8 character). */
  bytes(ids: readonly number[]): Uint8Array {
    const parts = ids.map((id) => this.bytesOf(id));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** The token's string form in the vocabulary (`Ġworld`, `▁world`, `<0x0A>`, `<|eot_id|>`). */
  token(id: number): string | undefined {
    return this.idToToken[id];
  }

  private bytesOf(id: number): Uint8Array {
    const cached = this.tokenBytes[id];
    if (cached) return cached;
    const tok = this.idToToken[id];
    if (!Number.isInteger(id) || id < 0 || id >= this.rows)
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.rows - 1})`);
    if (tok === undefined) return NOTHING; // a padding row
    const b = spell(tok, this.spelling);
    this.tokenBytes[id] = b;
    return b;
  }

  private plain(): Library {
    this.plainLibrary ??= build(this.file, {
      ...this.json,
      added_tokens: this.json.added_tokens.filter((t) => t.special !== true),
    });
    return this.plainLibrary;
  }
}

function build(file: string, json: TokenizerJson): Library {
  try {
    // tokenizer_config.json is not passed: what it would change (remove_space, lower-casing) is
    // what the slow Python tokenizers do, not what tokenizer.json says.
    return new Library(json, {});
  } catch (e) {
    throw new CheckpointError(file, `cannot be read: ${(e as Error).message}`);
  }
}

/** One token's bytes by the decoder's rule. */
function spell(tok: string, spelling: TokenSpelling): Uint8Array {
  if (spelling.kind === 'byte-level') {
    // every character through GPT-2's table; a token with a character outside it (an added token
    // such as one with a space) is its own UTF-8, as Hugging Face's ByteLevel decoder does
    const bytes: number[] = [];
    for (const ch of tok) {
      const b = CHAR_TO_BYTE.get(ch);
      if (b === undefined) return utf8.encode(tok);
      bytes.push(b);
    }
    return Uint8Array.from(bytes);
  }
  const byte = spelling.byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(tok) : null;
  if (byte) return Uint8Array.of(Number.parseInt(byte[1], 16));
  return utf8.encode(tok.replaceAll(spelling.replacement, ' '));
}

const NOTHING = new Uint8Array(0);

/** config.json's `vocab_size` in `dir`, or 0 where there is none to read. */
function modelRows(dir: string): number {
  try {
    const v = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).vocab_size;
    return Number.isInteger(v) && v > 0 ? v : 0;
  } catch {
    return 0;
  }
}
