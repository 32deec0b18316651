import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CHAR_TO_BYTE } from '../byte-level.js';
import { bundledVocabDir } from '../gpt2/tiny.js';

/**
 * Random checkpoints' tokenizers in the layouts Llama-family checkpoints ship (tokenizer.json and
 * tokenizer_config.json), with vocabularies and merges derived deterministically from GPT-2's
 * (bundledVocabDir), so that tests and `steerd model tiny` exercise each format without a download.
 *
 *   llama3         byte-level BPE, Llama 3's pre-tokenizer pattern (digits in groups of up to three),
 *                  `<|begin_of_text|>` prepended by the post-processor, the chat header tokens
 *   qwen2          byte-level BPE, Qwen2's pattern (single digits), NFC, ChatML's tokens, no BOS
 *   sentencepiece  Llama 2 / Mistral / TinyLlama: `▁` for spaces (prepended by the normalizer),
 *                  `<0xNN>` byte fallback for characters outside the vocabulary, `<s>` prepended
 */
export const TINY_TOKENIZER_KINDS = ['llama3', 'qwen2', 'sentencepiece'] as const;
export type TinyTokenizerKind = (typeof TINY_TOKENIZER_KINDS)[number];

/** What a checkpoint's config.json must say to match the tokenizer written. */
export interface TinyTokenizerInfo {
  /** Ids 0..vocabSize-1 are all tokens: the embedding's rows. */
  vocabSize: number;
  bosId: number;
  eosId: number;
}

// The pre-tokenizer patterns, in the Oniguruma syntax tokenizer.json holds.
const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const LLAMA3_SPECIALS = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|reserved_special_token_0|>',
  '<|reserved_special_token_1|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|reserved_special_token_2|>',
  '<|eot_id|>',
];
const QWEN2_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
const SP_SPECIALS = ['<unk>', '<s>', '</s>'];

/** Writes `tokenizer.json` and `tokenizer_config.json` of the given kind into `dir`. */
export function writeTinyTokenizer(dir: string, kind: TinyTokenizerKind): TinyTokenizerInfo {
  const t = tinyTokenizer(kind);
  t.write(dir);
  return t.info;
}

/** A tokenizer of the given kind, built but not yet written: what config.json needs first. */
export function tinyTokenizer(kind: TinyTokenizerKind): { info: TinyTokenizerInfo; write(dir: string): void } {
  const { tokenizer, config, info } =
    kind === 'sentencepiece' ? sentencePiece() : byteLevel(kind === 'llama3' ? 'llama3' : 'qwen2');
  const write = (dir: string) => {
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
    writeFileSync(join(dir, 'tokenizer_config.json'), `${JSON.stringify(config, null, 2)}\n`);
  };
  return { info, write };
}

interface Written {
  tokenizer: object;
  config: object;
  info: TinyTokenizerInfo;
}

function gpt2Vocab(): { vocab: Record<string, number>; merges: [string, string][] } {
  const dir = bundledVocabDir();
  const vocab = JSON.parse(readFileSync(join(dir, 'encoder.json'), 'utf8')) as Record<string, number>;
  const merges = readFileSync(join(dir, 'vocab.bpe'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#version'))
    .map((l) => l.split(' ') as [string, string]);
  return { vocab, merges };
}

const addedToken = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

const bpeModel = (vocab: Record<string, number>, merges: [string, string][], rest: object) => ({
  type: 'BPE',
  dropout: null,
  unk_token: null,
  continuing_subword_prefix: null,
  end_of_word_suffix: null,
  fuse_unk: false,
  byte_fallback: false,
  ignore_merges: false,
  ...rest,
  vocab,
  merges,
});

/** Llama 3's and Qwen2's layout: GPT-2's byte-level vocabulary without its one special token, then the kind's. */
function byteLevel(kind: 'llama3' | 'qwen2'): Written {
  const { vocab: gpt2, merges } = gpt2Vocab();
  const kept = Object.entries(gpt2).filter(([tok]) => tok !== '<|endoftext|>');
  const vocab = Object.fromEntries(kept);
  const next = Math.max(...kept.map(([, id]) => id)) + 1;
  const specials = kind === 'llama3' ? LLAMA3_SPECIALS : QWEN2_SPECIALS;
  const ids = new Map(specials.map((s, i) => [s, next + i]));
  const byteLevelStep = (addPrefixSpace: boolean, trimOffsets: boolean, useRegex: boolean) => ({
    type: 'ByteLevel',
    add_prefix_space: addPrefixSpace,
    trim_offsets: trimOffsets,
    use_regex: useRegex,
  });
  const split = {
    type: 'Split',
    pattern: { Regex: kind === 'llama3' ? LLAMA3_PATTERN : QWEN2_PATTERN },
    behavior: 'Isolated',
    invert: false,
  };
  const common = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((s) => addedToken(ids.get(s)!, s)),
    pre_tokenizer: { type: 'Sequence', pretokenizers: [split, byteLevelStep(false, kind === 'llama3', false)] },
  };
  const vocabSize = next + specials.length;
  if (kind === 'llama3') {
    const bos = '<|begin_of_text|>';
    const bosId = ids.get(bos)!;
    const template = {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
    };
    return {
      tokenizer: {
        ...common,
        normalizer: null,
        post_processor: { type: 'Sequence', processors: [byteLevelStep(true, false, true), template] },
        decoder: byteLevelStep(true, true, true),
        model: bpeModel(vocab, merges, { ignore_merges: true }),
      },
      config: {
        add_bos_token: true,
        bos_token: bos,
        eos_token: '<|end_of_text|>',
        clean_up_tokenization_spaces: true,
        model_max_length: 131072,
        tokenizer_class: 'PreTrainedTokenizerFast',
      },
      info: { vocabSize, bosId, eosId: ids.get('<|end_of_text|>')! },
    };
  }
  const eot = ids.get('<|endoftext|>')!;
  return {
    tokenizer: {
      ...common,
      normalizer: { type: 'NFC' },
      post_processor: byteLevelStep(false, false, false),
      decoder: byteLevelStep(false, false, false),
      model: bpeModel(vocab, merges, { continuing_subword_prefix: '', end_of_word_suffix: '' }),
    },
    config: {
      add_bos_token: false,
      add_prefix_space: false,
      bos_token: null,
      eos_token: '<|endoftext|>',
      pad_token: '<|endoftext|>',
      errors: 'replace',
      model_max_length: 32768,
      split_special_tokens: false,
      tokenizer_class: 'Qwen2Tokenizer',
    },
    // Qwen2's config.json names <|endoftext|> as both; no BOS is ever added
    info: { vocabSize, bosId: eot, eosId: eot },
  };
}

/**
 * The SentencePiece BPE layout of Llama 2, Mistral and TinyLlama, from GPT-2's vocabulary read as
 * text: `▁` for space, a piece kept only where its bytes are whole UTF-8 characters without
 * control characters, a merge only where both parts and the result are kept pieces. What is left
 * out (newlines, tabs, most CJK) is spelled in `<0xNN>` byte tokens.
 */
function sentencePiece(): Written {
  const { vocab: gpt2, merges: gpt2Merges } = gpt2Vocab();
  const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const asText = (tok: string): string | undefined => {
    const codes = Array.from(tok, (c) => CHAR_TO_BYTE.get(c));
    if (codes.some((b) => b === undefined)) return undefined;
    let s: string;
    try {
      s = strict.decode(Uint8Array.from(codes as number[]));
    } catch {
      return undefined;
    }
    if (/\p{Cc}/u.test(s)) return undefined;
    return s.replaceAll(' ', '\u2581');
  };

  const ids = new Map<string, number>();
  const add = (piece: string) => {
    if (!ids.has(piece)) ids.set(piece, ids.size);
  };
  for (const s of SP_SPECIALS) add(s);
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const reserved = new Set(ids.keys());
  // single characters first, then the merges' results in merge order
  for (const tok of Object.keys(gpt2).sort((a, b) => gpt2[a] - gpt2[b])) {
    const s = asText(tok);
    if (s !== undefined && [...s].length === 1) add(s);
  }
  const merges: [string, string][] = [];
  for (const [a, b] of gpt2Merges) {
    const [ta, tb, tr] = [asText(a), asText(b), asText(a + b)];
    if (ta === undefined || tb === undefined || tr === undefined) continue;
    if (!ids.has(ta) || !ids.has(tb) || reserved.has(ta) || reserved.has(tb) || reserved.has(tr)) continue;
    merges.push([ta, tb]);
    add(tr);
  }

  const vocab = Object.fromEntries(ids);
  const bosId = ids.get('<s>')!;
  const template = {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<s>', type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: '<s>', type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<s>': { id: '<s>', ids: [bosId], tokens: ['<s>'] } },
  };
  const replace = (from: string, to: string) => ({ type: 'Replace', pattern: { String: from }, content: to });
  return {
    tokenizer: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: SP_SPECIALS.map((s) => addedToken(ids.get(s)!, s)),
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, replace(' ', '\u2581')] },
      pre_tokenizer: null,
      post_processor: template,
      decoder: {
        type: 'Sequence',
        decoders: [
          replace('\u2581', ' '),
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: bpeModel(vocab, merges, { unk_token: '<unk>', fuse_unk: true, byte_fallback: true }),
    },
    config: {
      add_bos_token: true,
      add_eos_token: false,
      bos_token: '<s>',
      eos_token: '</s>',
      unk_token: '<unk>',
      pad_token: null,
      clean_up_tokenization_spaces: false,
      legacy: false,
      model_max_length: 2048,
      tokenizer_class: 'LlamaTokenizer',
    },
    info: { vocabSize: ids.size, bosId, eosId: ids.get('</s>')! },
  };
}
