import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../../errors.js';
import { Gpt2Tokenizer } from '../gpt2/tokenizer.js';
import type { Tokenizer } from '../tokenizer.js';

/**
 * The Llama family's tokenizer, where it is GPT-2's byte-level BPE with GPT-2's pre-tokenizer
 * (gpt2/tokenizer.ts reads it). The SentencePiece-style tokenizers most Llama checkpoints ship (byte
 * fallback, Metaspace, or a pre-tokenizer pattern of their own as in Llama 3 and Qwen2) would be
 * read wrongly by it: they are refused, naming the file and what it has.
 */
export function llamaTokenizer(dir: string): Tokenizer {
  const tokFile = join(dir, 'tokenizer.json');
  if (existsSync(tokFile)) refuseUnreadable(tokFile);
  else if (!existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'tokenizer.model'))) {
    throw new CheckpointError(
      join(dir, 'tokenizer.model'),
      'SentencePiece tokenizers are not supported yet (steerd reads byte-level BPE: vocab.json + merges.txt, or tokenizer.json)',
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

/** Refuses a tokenizer.json that is not GPT-2's byte-level BPE. */
function refuseUnreadable(file: string): void {
  let j: {
    model?: { type?: string; byte_fallback?: boolean };
    pre_tokenizer?: { type?: string; use_regex?: boolean; pretokenizers?: unknown[] } | null;
  };
  try {
    j = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(file, `cannot read as JSON (${(e as Error).message})`);
  }
  const unsupported = (what: string) =>
    new CheckpointError(file, `${what}: not supported yet (steerd reads GPT-2-style byte-level BPE tokenizers)`);
  if (j.model?.type !== 'BPE') throw unsupported(`the tokenizer model is ${JSON.stringify(j.model?.type)}`);
  if (j.model.byte_fallback) throw unsupported('the BPE model has byte_fallback (a SentencePiece-style tokenizer)');
  const pre = j.pre_tokenizer;
  if (pre?.type !== 'ByteLevel' || pre.use_regex === false) {
    throw unsupported(`the pre-tokenizer is ${JSON.stringify(pre?.type ?? null)}, not GPT-2's ByteLevel`);
  }
}
