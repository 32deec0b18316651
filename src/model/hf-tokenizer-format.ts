import { CheckpointError } from '../errors.js';

/**
 * What of a Hugging Face `tokenizer.json` steerd serves: the components that the runtime library
 * (@huggingface/tokenizers) encodes as the reference implementation (the Rust `tokenizers`) does,
 * and the decoders whose bytes steerd can give token by token. Anything else is refused at load,
 * naming the file and the component, rather than tokenized differently from the checkpoint's own
 * tokenizer.
 *
 *   model          BPE (Llama, Mistral, Qwen2), with or without byte fallback; no dropout, no
 *                  word prefixes or suffixes
 *   normalizer     none, NFC, NFD, NFKC, NFKD, Prepend, Replace, or a Sequence of them
 *   pre-tokenizer  none, ByteLevel (GPT-2's pattern, or after a Split), Split on a regex with the
 *                  Isolated behaviour, Metaspace without splitting, or a Sequence of them
 *   post-processor none, ByteLevel, TemplateProcessing, or a Sequence of them (steerd only reads
 *                  from it whether a BOS is added)
 *   decoder        ByteLevel, or SentencePiece's: `▁` as space (Replace or Metaspace), with
 *                  ByteFallback, Fuse and a Strip of leading spaces
 *   added tokens   any, except `single_word` ones
 */

/** How a token's string is turned into bytes: the decoder's rule. */
export type TokenSpelling =
  /** GPT-2's byte ↔ character table (byte-level BPE). */
  | { kind: 'byte-level' }
  /** SentencePiece's: `replacement` is a space; `<0xNN>` is that byte where `byteFallback`. */
  | { kind: 'metaspace'; replacement: string; byteFallback: boolean };

type Json = Record<string, unknown>;

/** The parts of tokenizer.json steerd reads, checked. */
export interface TokenizerJson {
  model: { type: 'BPE'; vocab: Record<string, number>; merges: unknown[] } & Json;
  added_tokens: { id: number; content: string; special?: boolean }[];
  normalizer: Json | null;
  pre_tokenizer: Json | null;
  post_processor: Json | null;
  decoder: Json | null;
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** GPT-2's pre-tokenizer pattern as a ByteLevel pre-tokenizer with `use_regex` applies it (Oniguruma syntax). */
export const GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * Checks a parsed tokenizer.json (`file` names it in errors) and returns it in the form the
 * library is given: every component present (null where absent, as the Rust library reads a
 * missing one), a ByteLevel pre-tokenizer that applies GPT-2's pattern spelled as the Split it
 * stands for (the library's own copy of the pattern uses JavaScript's `\s`, which is not Unicode
 * White_Space: it takes U+FEFF and misses U+0085).
 */
export function checkTokenizerJson(file: string, raw: unknown): { json: TokenizerJson; spelling: TokenSpelling } {
  const refuse = (what: string) => new CheckpointError(file, `${what}; steerd cannot tokenize it as Hugging Face does`);
  if (!isObject(raw)) throw new CheckpointError(file, 'expected a JSON object');
  const model = raw.model;
  if (!isObject(model)) throw new CheckpointError(file, 'has no "model"');
  if (model.type !== 'BPE') throw refuse(`the tokenizer model is ${JSON.stringify(model.type)}, not BPE`);
  if (!isObject(model.vocab) || !Array.isArray(model.merges))
    throw new CheckpointError(file, 'the BPE model has no "vocab" object or "merges" list');
  if (typeof model.dropout === 'number' && model.dropout > 0)
    throw refuse(`the BPE model has dropout ${model.dropout}`);
  for (const key of ['continuing_subword_prefix', 'end_of_word_suffix']) {
    if (model[key] != null && model[key] !== '') throw refuse(`the BPE model has ${key} ${JSON.stringify(model[key])}`);
  }
  const vocab = model.vocab as Record<string, number>;
  const byteTokens = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const unkImpossible = model.byte_fallback === true && byteTokens.every((t) => Object.hasOwn(vocab, t));
  if (model.fuse_unk === true && model.unk_token != null && !unkImpossible)
    throw refuse('the BPE model fuses unknown tokens (fuse_unk) and can produce them');

  const added = raw.added_tokens ?? [];
  if (!Array.isArray(added)) throw new CheckpointError(file, '"added_tokens" is not a list');
  for (const t of added) {
    if (!isObject(t) || typeof t.id !== 'number' || typeof t.content !== 'string')
      throw new CheckpointError(file, `added token ${JSON.stringify(t)} has no id and content`);
    if (t.single_word === true) throw refuse(`added token ${JSON.stringify(t.content)} is single_word`);
  }

  const normalizer = component(file, raw, 'normalizer');
  walk(normalizer, 'normalizers', (n) => {
    if (!['NFC', 'NFD', 'NFKC', 'NFKD', 'Prepend', 'Replace', 'Sequence'].includes(n.type as string))
      throw refuse(`the normalizer ${JSON.stringify(n.type)} is not supported`);
  });

  let pre = component(file, raw, 'pre_tokenizer');
  walk(pre, 'pretokenizers', (p) => {
    switch (p.type) {
      case 'Sequence':
        return;
      case 'ByteLevel':
        if (p.add_prefix_space === true) throw refuse('the ByteLevel pre-tokenizer adds a prefix space');
        return;
      case 'Split': {
        const pattern = p.pattern;
        if (!isObject(pattern) || typeof pattern.Regex !== 'string')
          throw refuse('a Split pre-tokenizer splits on a string, not a regex');
        if (p.behavior !== 'Isolated' || p.invert === true)
          throw refuse(
            `a Split pre-tokenizer has the ${JSON.stringify(p.behavior)} behaviour${p.invert ? ', inverted' : ''}`,
          );
        return;
      }
      case 'Metaspace':
        if (p.split !== false) throw refuse('the Metaspace pre-tokenizer splits at spaces');
        if (!['first', 'always', 'never'].includes(p.prepend_scheme as string))
          throw refuse(`the Metaspace pre-tokenizer's prepend_scheme is ${JSON.stringify(p.prepend_scheme)}`);
        return;
      default:
        throw refuse(`the pre-tokenizer ${JSON.stringify(p.type)} is not supported`);
    }
  });
  pre = gpt2PatternAsSplit(pre);

  const post = component(file, raw, 'post_processor');
  walk(post, 'processors', (p) => {
    if (!['ByteLevel', 'TemplateProcessing', 'Sequence'].includes(p.type as string))
      throw refuse(`the post-processor ${JSON.stringify(p.type)} is not supported`);
  });

  const decoder = component(file, raw, 'decoder');
  const spelling = decoderSpelling(decoder, refuse);
  const json = { ...raw, model, added_tokens: added, normalizer, pre_tokenizer: pre, post_processor: post, decoder };
  return { json: json as unknown as TokenizerJson, spelling };
}

function component(file: string, raw: Json, key: string): Json | null {
  const c = raw[key] ?? null;
  if (c !== null && (!isObject(c) || typeof c.type !== 'string'))
    throw new CheckpointError(file, `"${key}" is not a component with a type`);
  return c as Json | null;
}

/** Calls `f` on a component and, for a Sequence, on each of its steps (`list` names them). */
function walk(c: Json | null, list: string, f: (c: Json) => void): void {
  if (c === null) return;
  f(c);
  if (c.type === 'Sequence') for (const s of (c[list] as Json[] | undefined) ?? []) walk(s, list, f);
}

function gpt2PatternAsSplit(pre: Json | null): Json | null {
  if (pre === null) return null;
  if (pre.type === 'Sequence')
    return { ...pre, pretokenizers: (pre.pretokenizers as Json[]).map((p) => gpt2PatternAsSplit(p)) };
  if (pre.type !== 'ByteLevel' || pre.use_regex === false) return pre;
  const split = { type: 'Split', pattern: { Regex: GPT2_PATTERN }, behavior: 'Isolated', invert: false };
  return { type: 'Sequence', pretokenizers: [split, { ...pre, use_regex: false }] };
}

/** The byte rule a decoder stands for; refuses a decoder that is not one steerd can follow token by token. */
function decoderSpelling(decoder: Json | null, refuse: (what: string) => CheckpointError): TokenSpelling {
  if (decoder === null) throw refuse('it has no decoder');
  if (decoder.type === 'ByteLevel') return { kind: 'byte-level' };
  const steps = decoder.type === 'Sequence' ? ((decoder.decoders as Json[] | undefined) ?? []) : [decoder];
  let replacement: string | undefined;
  let byteFallback = false;
  for (const s of steps) {
    if (!isObject(s)) throw refuse('a decoder step is not an object');
    if (s.type === 'Replace' && isObject(s.pattern) && typeof s.pattern.String === 'string' && s.content === ' ') {
      replacement = s.pattern.String;
    } else if (s.type === 'Metaspace') {
      replacement = typeof s.replacement === 'string' ? s.replacement : '\u2581';
    } else if (s.type === 'ByteFallback') {
      byteFallback = true;
    } else if (s.type === 'Fuse') {
      // joins the tokens' strings: nothing per token
    } else if (s.type === 'Strip' && s.content === ' ' && s.stop === 0) {
      // drops the space the normalizer prepended to the text: steerd keeps it (hf-tokenizer.ts)
    } else {
      throw refuse(`the decoder ${describe(decoder)} is not one steerd can decode token by token`);
    }
  }
  if (replacement === undefined || [...replacement].length !== 1)
    throw refuse(`the decoder ${describe(decoder)} does not turn a replacement character into spaces`);
  return { kind: 'metaspace', replacement, byteFallback };
}

function describe(d: Json): string {
  return d.type === 'Sequence'
    ? `Sequence [${((d.decoders as Json[] | undefined) ?? []).map((s) => s?.type).join(', ')}]`
    : JSON.stringify(d.type);
}
