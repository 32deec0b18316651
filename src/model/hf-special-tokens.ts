import { join } from 'node:path';
import { CheckpointError } from '../errors.js';
import type { TokenizerJson } from './hf-tokenizer-format.js';
import { readJsonObject, tokenizerSettings } from './json-file.js';

/** A checkpoint's BOS and EOS, and whether its tokenizer prepends BOS to a text. */
export interface SpecialTokens {
  bosId: number;
  eosId: number;
  addBos: boolean;
}

type Json = Record<string, unknown>;

/**
 * BOS, EOS and `addBos` from the three files that say them, with the precedence transformers gives
 * them:
 *
 *   addBos  tokenizer_config.json's `add_bos_token` where it is a boolean (transformers' Llama
 *           tokenizers rebuild their post-processor from it); else whether tokenizer.json's
 *           post-processor begins its `single` template with a special token (Llama 2 and 3 do,
 *           Qwen2 has no template); else false.
 *   bosId   the template's token where the template decides `addBos`; else the token
 *           tokenizer_config.json names `bos_token`; else the template's; else config.json's
 *           `bos_token_id` (the first of a list); else `eosId`.
 *   eosId   config.json's `eos_token_id`, the model's, which generation stops at (the first of a
 *           list); else the token tokenizer_config.json names `eos_token`.
 *
 * A token named that the vocabulary lacks, or an id outside it, is refused, naming file and field.
 * `idOf` looks a token's string up among the vocabulary and the added tokens.
 */
export function specialTokens(
  dir: string,
  json: TokenizerJson,
  idOf: (token: string) => number | undefined,
  vocabSize: number,
): SpecialTokens {
  const configFile = join(dir, 'config.json');
  const config = readJsonObject(configFile) ?? {};
  const { settings: tokConfig, file: tokFile } = tokenizerSettings(dir);

  const named = (key: 'bos_token' | 'eos_token'): number | undefined => {
    const v = tokConfig[key];
    const content = typeof v === 'string' ? v : isObject(v) && typeof v.content === 'string' ? v.content : undefined;
    if (content === undefined) return undefined;
    const id = idOf(content);
    if (id === undefined)
      throw new CheckpointError(tokFile(key), `${key} ${JSON.stringify(content)} is not in tokenizer.json`, key);
    return id;
  };
  const configId = (key: 'bos_token_id' | 'eos_token_id'): number | undefined => {
    const raw = config[key];
    if (raw == null || (Array.isArray(raw) && raw.length === 0)) return undefined;
    const v = Array.isArray(raw) ? raw[0] : raw;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocabSize)
      throw new CheckpointError(configFile, `${key} ${JSON.stringify(raw)} is not a token of tokenizer.json`, key);
    return v;
  };

  const template = templateBos(json.post_processor, idOf);
  const explicit = tokConfig.add_bos_token;
  const addBos = typeof explicit === 'boolean' ? explicit : template !== undefined;
  const eosId = configId('eos_token_id') ?? named('eos_token');
  if (eosId === undefined)
    throw new CheckpointError(
      configFile,
      'names no eos_token_id, and tokenizer_config.json no eos_token: no token ends a generation',
      'eos_token_id',
    );
  const bosId =
    (typeof explicit !== 'boolean' ? template : undefined) ??
    named('bos_token') ??
    template ??
    configId('bos_token_id') ??
    eosId;
  return { bosId, eosId, addBos };
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The id of the special token a TemplateProcessing's `single` begins with, if it does (in a Sequence too). */
function templateBos(post: Json | null, idOf: (token: string) => number | undefined): number | undefined {
  if (post === null) return undefined;
  if (post.type === 'Sequence') {
    for (const p of (post.processors as Json[] | undefined) ?? []) {
      const id = templateBos(p, idOf);
      if (id !== undefined) return id;
    }
    return undefined;
  }
  if (post.type !== 'TemplateProcessing' || !Array.isArray(post.single)) return undefined;
  const first = post.single[0] as Json | undefined;
  const special = isObject(first) && isObject(first.SpecialToken) ? first.SpecialToken : undefined;
  if (typeof special?.id !== 'string') return undefined;
  const entry = isObject(post.special_tokens) ? post.special_tokens[special.id] : undefined;
  const ids = isObject(entry) && Array.isArray(entry.ids) ? entry.ids : undefined;
  return typeof ids?.[0] === 'number' ? ids[0] : idOf(special.id);
}
