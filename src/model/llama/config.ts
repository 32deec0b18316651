import { CheckpointError } from '../../errors.js';
import { positiveInt } from '../config.js';

/** RoPE's frequency scaling, as Hugging Face's `rope_scaling` writes it. */
export type RopeScaling =
  /** Positions divided by `factor` (every frequency divided by it). */
  | { type: 'linear'; factor: number }
  /** Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth blend between. */
  | {
      type: 'llama3';
      factor: number;
      low_freq_factor: number;
      high_freq_factor: number;
      original_max_position_embeddings: number;
    };

/** The Llama-family hyper-parameters steerd needs, read from a Hugging Face `config.json`. */
export interface LlamaConfig {
  /** `llama`, `qwen2` or `mistral`: decides which projections carry a bias. */
  model_type: string;
  /** Number of transformer blocks. */
  num_hidden_layers: number;
  /** Hidden size (residual stream width). */
  hidden_size: number;
  /** MLP width (gate and up projections). */
  intermediate_size: number;
  /** Query heads. */
  num_attention_heads: number;
  /** Key and value heads; a divisor of the query heads (grouped-query attention). Default: the query heads. */
  num_key_value_heads: number;
  /** Width of one head. Default hidden_size / num_attention_heads. */
  head_dim: number;
  /** RMSNorm epsilon. Default 1e-6 (Hugging Face's). */
  rms_norm_eps: number;
  /** RoPE base. Default 10000. */
  rope_theta: number;
  /** RoPE frequency scaling; null: none. */
  rope_scaling: RopeScaling | null;
  /** q, k and v projections have a bias (always for Qwen2; `attention_bias` for Llama). */
  qkv_bias: boolean;
  /** The output projection has a bias (Llama's `attention_bias`; never for Qwen2 or Mistral). */
  o_bias: boolean;
  /** The unembedding is the token embedding. Default false (Hugging Face's for these models). */
  tie_word_embeddings: boolean;
  vocab_size: number;
  /** Context length: the longest sequence the positions cover. */
  max_position_embeddings: number;
  bos_token_id: number;
  /** The token that ends a generation: the first when config.json lists several. */
  eos_token_id: number;
}

export const LLAMA_MODEL_TYPES = ['llama', 'qwen2', 'mistral'] as const;

const positiveNumber = (file: string, r: Record<string, unknown>, key: string, fallback: number) => {
  const v = r[key] ?? fallback;
  if (typeof v !== 'number' || !(v > 0)) {
    throw new CheckpointError(file, `"${key}" must be a positive number (got ${JSON.stringify(v)})`, key);
  }
  return v;
};

/** A token id: a non-negative integer, or the first of a list (Llama 3's several end tokens). */
function tokenId(file: string, r: Record<string, unknown>, key: string, fallback: number): number {
  const raw = r[key] ?? fallback;
  const v = Array.isArray(raw) ? raw[0] : raw;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new CheckpointError(file, `"${key}" must be a token id (got ${JSON.stringify(raw)})`, key);
  }
  return v;
}

function ropeScaling(file: string, r: Record<string, unknown>, ctx: number): RopeScaling | null {
  const s = r.rope_scaling;
  if (s == null) return null;
  if (typeof s !== 'object' || Array.isArray(s))
    throw new CheckpointError(file, 'rope_scaling must be an object or null', 'rope_scaling');
  const o = s as Record<string, unknown>;
  // Hugging Face wrote `type` before it wrote `rope_type`.
  const type = o.rope_type ?? o.type;
  if (type === 'default') return null;
  const num = (key: string, fallback?: number) => {
    const v = o[key] ?? fallback;
    if (typeof v !== 'number' || !(v > 0)) {
      throw new CheckpointError(
        file,
        `rope_scaling.${key} must be a positive number (got ${JSON.stringify(v)})`,
        'rope_scaling',
      );
    }
    return v;
  };
  if (type === 'linear') return { type, factor: num('factor') };
  if (type === 'llama3') {
    const scaling = {
      type,
      factor: num('factor'),
      low_freq_factor: num('low_freq_factor'),
      high_freq_factor: num('high_freq_factor'),
      original_max_position_embeddings: num('original_max_position_embeddings', ctx),
    } as const;
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      throw new CheckpointError(file, 'rope_scaling.high_freq_factor must exceed low_freq_factor', 'rope_scaling');
    }
    return scaling;
  }
  throw new CheckpointError(
    file,
    `rope_scaling type ${JSON.stringify(type)} is not supported (steerd reads none, "linear" and "llama3")`,
    'rope_scaling',
  );
}

/**
 * Validates a Llama, Qwen2 or Mistral config object (config.ts reads the file, families.ts has
 * checked its `model_type`); `file` names it in errors. What this forward pass does not compute is
 * refused by name: other RoPE scalings, a sliding window shorter than the context, mixtures of
 * experts, other activations, an MLP bias. Weights other than float32 are refused where the
 * checkpoint is opened (checkpoint.ts), whatever `torch_dtype` says.
 */
export function parseConfig(r: Record<string, unknown>, file = 'config.json'): LlamaConfig {
  const model_type = String(r.model_type);
  for (const moe of ['num_local_experts', 'num_experts'] as const) {
    if (r[moe] != null && r[moe] !== 0) {
      throw new CheckpointError(file, `${moe} is set: mixture-of-experts models are not supported`, moe);
    }
  }
  const act = r.hidden_act ?? 'silu';
  if (act !== 'silu')
    throw new CheckpointError(file, `hidden_act ${JSON.stringify(act)} is not supported (expected silu)`, 'hidden_act');
  if (r.mlp_bias === true) throw new CheckpointError(file, 'mlp_bias=true is not supported', 'mlp_bias');
  const hidden_size = positiveInt(file, r, 'hidden_size');
  const num_attention_heads = positiveInt(file, r, 'num_attention_heads');
  const num_key_value_heads = positiveInt(file, r, 'num_key_value_heads', num_attention_heads);
  if (num_attention_heads % num_key_value_heads !== 0) {
    throw new CheckpointError(
      file,
      `num_attention_heads (${num_attention_heads}) is not a multiple of num_key_value_heads (${num_key_value_heads})`,
      'num_key_value_heads',
    );
  }
  if (r.head_dim == null && hidden_size % num_attention_heads !== 0) {
    throw new CheckpointError(
      file,
      `hidden_size (${hidden_size}) is not a multiple of num_attention_heads (${num_attention_heads})`,
      'num_attention_heads',
    );
  }
  const head_dim = positiveInt(file, r, 'head_dim', hidden_size / num_attention_heads);
  if (head_dim % 2 !== 0) throw new CheckpointError(file, `head_dim (${head_dim}) must be even for RoPE`, 'head_dim');
  const max_position_embeddings = positiveInt(file, r, 'max_position_embeddings');
  // Mistral slides whenever it names a window; Qwen2 only with use_sliding_window.
  const window = r.sliding_window;
  const slides = model_type === 'mistral' ? window != null : r.use_sliding_window === true;
  if (slides && (typeof window !== 'number' || window < max_position_embeddings)) {
    throw new CheckpointError(
      file,
      `sliding_window ${JSON.stringify(window)} is shorter than max_position_embeddings (${max_position_embeddings}): sliding-window attention is not supported`,
      'sliding_window',
    );
  }
  const attentionBias = r.attention_bias === true;
  const bos_token_id = tokenId(file, r, 'bos_token_id', 1);
  return {
    model_type,
    num_hidden_layers: positiveInt(file, r, 'num_hidden_layers'),
    hidden_size,
    intermediate_size: positiveInt(file, r, 'intermediate_size'),
    num_attention_heads,
    num_key_value_heads,
    head_dim,
    rms_norm_eps: positiveNumber(file, r, 'rms_norm_eps', 1e-6),
    rope_theta: positiveNumber(file, r, 'rope_theta', 10000),
    rope_scaling: ropeScaling(file, r, max_position_embeddings),
    qkv_bias: model_type === 'qwen2' || attentionBias,
    o_bias: model_type === 'llama' && attentionBias,
    tie_word_embeddings: r.tie_word_embeddings === true,
    vocab_size: positiveInt(file, r, 'vocab_size'),
    max_position_embeddings,
    bos_token_id,
    eos_token_id: tokenId(file, r, 'eos_token_id', 2),
  };
}
