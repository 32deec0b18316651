import type { ModelFamily } from '../family.js';
import { SITES } from '../hooks.js';
import { llamaBody } from './body.js';
import { LLAMA_MODEL_TYPES, type LlamaConfig, parseConfig } from './config.js';
import { canonicalKey, expectedShapes, halfNames, lmHead } from './params.js';
import { llamaTokenizer } from './tokenizer.js';

/**
 * Llama (Touvron et al. 2023) and the checkpoints of its layout: Hugging Face's `model_type`
 * `llama`, `qwen2` (bias on q, k, v) and `mistral`. RMSNorm, RoPE, SwiGLU, grouped-query attention.
 */
export const LLAMA: ModelFamily<LlamaConfig> = {
  id: 'llama',
  name: 'Llama',
  norm: 'rmsnorm',
  modelTypes: LLAMA_MODEL_TYPES,
  sites: SITES,
  parseConfig,
  shape: (c) => ({
    layers: c.num_hidden_layers,
    embd: c.hidden_size,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    vocab: c.vocab_size,
    ctx: c.max_position_embeddings,
    eos: c.eos_token_id,
  }),
  parameters: expectedShapes,
  head: lmHead,
  embedding: 'model.embed_tokens.weight',
  linearLayout: 'out_in',
  canonicalKey,
  halfNames: (c) => halfNames(c.num_hidden_layers),
  body: llamaBody,
  tokenizer: llamaTokenizer,
};
