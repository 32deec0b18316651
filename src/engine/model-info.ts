import type { Checkpoint } from '../model/checkpoint.js';
import type { ModelInfo } from './types.js';

/** What clients and validation need to know of a checkpoint. */
export function modelInfo(ck: Checkpoint, provider: string): ModelInfo {
  const c = ck.config;
  return {
    n_layer: c.n_layer,
    n_embd: c.n_embd,
    n_head: c.n_head,
    n_positions: c.n_positions,
    vocab_size: c.vocab_size,
    eos_token_id: c.eos_token_id,
    fingerprint: ck.fingerprint,
    provider,
  };
}
