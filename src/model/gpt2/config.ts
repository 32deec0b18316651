import { CheckpointError } from '../../errors.js';
import { positiveInt } from '../config.js';

/** The GPT-2 hyper-parameters steerd needs, read from a Hugging Face `config.json`. */
export interface Gpt2Config {
  /** Number of transformer blocks. */
  n_layer: number;
  /** Hidden size (residual stream width). */
  n_embd: number;
  /** Attention heads per block; `n_embd` must be a multiple of it. */
  n_head: number;
  /** Context length (learned position embeddings). */
  n_positions: number;
  /** Vocabulary size (50257 for every released GPT-2). */
  vocab_size: number;
  /** MLP width; HF writes `null` for the default 4 × n_embd. */
  n_inner: number;
  /** Layer-norm epsilon. */
  layer_norm_epsilon: number;
  /** BOS token id (also EOS for GPT-2). */
  bos_token_id: number;
  eos_token_id: number;
}

// GPT-2's MLP uses the tanh approximation of GELU; HF names it `gelu_new` (or `gelu_pytorch_tanh`).
const TANH_GELU = new Set(['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast']);

/**
 * Validates a GPT-2 config object (config.ts reads the file, families.ts has checked its
 * `model_type`); `file` names it in errors.
 */
export function parseConfig(r: Record<string, unknown>, file = 'config.json'): Gpt2Config {
  const act = r.activation_function ?? 'gelu_new';
  if (typeof act !== 'string' || !TANH_GELU.has(act)) {
    throw new CheckpointError(
      file,
      `activation_function ${JSON.stringify(act)} is not supported (GPT-2 uses gelu_new)`,
      'activation_function',
    );
  }
  for (const flag of ['scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn'] as const) {
    if (r[flag] === true) throw new CheckpointError(file, `${flag}=true is not supported`, flag);
  }
  if (r.scale_attn_weights === false)
    throw new CheckpointError(file, 'scale_attn_weights=false is not supported', 'scale_attn_weights');
  const n_embd = positiveInt(file, r, 'n_embd');
  const n_head = positiveInt(file, r, 'n_head');
  if (n_embd % n_head !== 0) {
    throw new CheckpointError(file, `n_embd (${n_embd}) is not a multiple of n_head (${n_head})`, 'n_head');
  }
  const eps = r.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== 'number' || !(eps > 0)) {
    throw new CheckpointError(
      file,
      `layer_norm_epsilon must be a positive number (got ${JSON.stringify(eps)})`,
      'layer_norm_epsilon',
    );
  }
  const vocab_size = positiveInt(file, r, 'vocab_size');
  const eosDefault = vocab_size - 1;
  return {
    n_layer: positiveInt(file, r, 'n_layer'),
    n_embd,
    n_head,
    n_positions: positiveInt(file, r, 'n_positions', r.n_ctx),
    vocab_size,
    n_inner: r.n_inner == null ? 4 * n_embd : positiveInt(file, r, 'n_inner'),
    layer_norm_epsilon: eps,
    bos_token_id: r.bos_token_id == null ? eosDefault : positiveInt(file, r, 'bos_token_id'),
    eos_token_id: r.eos_token_id == null ? eosDefault : positiveInt(file, r, 'eos_token_id'),
  };
}
