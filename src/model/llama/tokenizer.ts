import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../../errors.js';
import { Gpt2Tokenizer } from '../gpt2/tokenizer.js';
import { HfTokenizer } from '../hf-tokenizer.js';
import type { Tokenizer } from '../tokenizer.js';

/**
 * The Llama family's tokenizer: the checkpoint's `tokenizer.json` where it has one (Llama 2 and 3,
 * Mistral, Qwen2: hf-tokenizer.ts, which refuses what it cannot tokenize as Hugging Face does);
 * else GPT-2's byte-level BPE from `vocab.json` + `merges.txt`. A SentencePiece `tokenizer.model`
 * alone is refused: steerd reads the tokenizer.json that Hugging Face converts it to.
 */
export function llamaTokenizer(dir: string): Tokenizer {
  if (existsSync(join(dir, 'tokenizer.json'))) return HfTokenizer.fromDir(dir);
  if (!existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'tokenizer.model'))) {
    throw new CheckpointError(
      join(dir, 'tokenizer.model'),
      "is a SentencePiece model, which steerd does not read: it needs the checkpoint's tokenizer.json (transformers writes one: AutoTokenizer.from_pretrained(dir).save_pretrained(dir))",
    );
  }
  try {
    return Gpt2Tokenizer.fromDir(dir);
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    // e.g. a vocabulary without <|endoftext|>, which the byte-level BPE reader needs
    throw new CheckpointError(join(dir, 'vocab.json'), `cannot read the tokenizer: ${(e as Error).message}`);
  }
}
