import { CheckpointError } from '../errors.js';
import { readConfigJson } from './config.js';
import type { ModelFamily } from './family.js';
import { GPT2 } from './gpt2/family.js';
import { LLAMA } from './llama/family.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * The model families steerd serves (docs/architecture.md §8). A checkpoint's config.json names its
 * architecture in `model_type`, as Hugging Face writes it; that alone picks the family.
 */
export const FAMILIES: readonly ModelFamily[] = [GPT2, LLAMA];

/** The family of a parsed config.json (`file` names it in errors); refuses a `model_type` no family reads. */
export function familyOf(raw: Record<string, unknown>, file: string): ModelFamily {
  const type = raw.model_type;
  const family = FAMILIES.find((f) => typeof type === 'string' && f.modelTypes.includes(type));
  if (family) return family;
  const archs = Array.isArray(raw.architectures) ? ` (${raw.architectures.join(', ')})` : '';
  const served = FAMILIES.map((f) => `${f.name} (model_type ${f.modelTypes.map((t) => `"${t}"`).join(' or ')})`);
  throw new CheckpointError(
    file,
    `model_type is ${JSON.stringify(type)}${archs}; steerd serves ${served.join(', ')} checkpoints only`,
    'model_type',
  );
}

/** The tokenizer of a checkpoint directory, as its family reads it. */
export function loadTokenizer(dir: string): Tokenizer {
  const { file, raw } = readConfigJson(dir);
  return familyOf(raw, file).tokenizer(dir);
}
