import type { LlamaConfig } from './config.js';

/**
 * The Llama family's checkpoint key map: the parameters by Hugging Face's names, with their shapes.
 * Its linear maps are nn.Linear layers, whose weights are stored [out, in].
 */

/** Expected parameter shapes for a config, by canonical name; `lm_head.weight` only when untied (`head`). */
export function expectedShapes(c: LlamaConfig): Map<string, number[]> {
  const H = c.hidden_size;
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const m = new Map<string, number[]>([['model.embed_tokens.weight', [c.vocab_size, H]]]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    m.set(`${p}input_layernorm.weight`, [H]);
    for (const [name, out] of [
      ['q', q],
      ['k', kv],
      ['v', kv],
    ] as const) {
      m.set(`${p}self_attn.${name}_proj.weight`, [out, H]);
      if (c.qkv_bias) m.set(`${p}self_attn.${name}_proj.bias`, [out]);
    }
    m.set(`${p}self_attn.o_proj.weight`, [H, q]);
    if (c.o_bias) m.set(`${p}self_attn.o_proj.bias`, [H]);
    m.set(`${p}post_attention_layernorm.weight`, [H]);
    m.set(`${p}mlp.gate_proj.weight`, [c.intermediate_size, H]);
    m.set(`${p}mlp.up_proj.weight`, [c.intermediate_size, H]);
    m.set(`${p}mlp.down_proj.weight`, [H, c.intermediate_size]);
  }
  m.set('model.norm.weight', [H]);
  if (!c.tie_word_embeddings) m.set('lm_head.weight', [c.vocab_size, H]);
  return m;
}

/** The output projection: required unless `tie_word_embeddings`, when a file may still carry a copy. */
export const lmHead = (c: LlamaConfig) => ({ name: 'lm_head.weight', shape: [c.vocab_size, c.hidden_size] });

// RoPE's frequencies, which older HF versions saved with the weights; the graph computes its own.
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/** A stored key is its canonical name; undefined for a saved RoPE buffer. */
export const canonicalKey = (key: string): string | undefined => (IGNORED.test(key) ? undefined : key);

/** The weights of the float16 copy (half-weights.ts), in file order: the blocks' seven linear maps. */
export function halfNames(nLayer: number): string[] {
  const names: string[] = [];
  for (let l = 0; l < nLayer; l++)
    for (const m of [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.o_proj',
      'mlp.gate_proj',
      'mlp.up_proj',
      'mlp.down_proj',
    ])
      names.push(`model.layers.${l}.${m}.weight`);
  return names;
}
