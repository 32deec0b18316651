import type { Gpt2Config } from './config.js';

/**
 * GPT-2's checkpoint key map: the parameters by Hugging Face's names, with their shapes. Its linear
 * maps are Conv1D layers, whose weights are stored [in, out].
 */

/** Expected parameter shapes for a config, by canonical name. `lm_head.weight` is optional (`head`). */
export function expectedShapes(c: Gpt2Config): Map<string, number[]> {
  const H = c.n_embd;
  const m = new Map<string, number[]>([
    ['wte.weight', [c.vocab_size, H]],
    ['wpe.weight', [c.n_positions, H]],
  ]);
  for (let i = 0; i < c.n_layer; i++) {
    const p = `h.${i}.`;
    m.set(`${p}ln_1.weight`, [H]);
    m.set(`${p}ln_1.bias`, [H]);
    m.set(`${p}attn.c_attn.weight`, [H, 3 * H]);
    m.set(`${p}attn.c_attn.bias`, [3 * H]);
    m.set(`${p}attn.c_proj.weight`, [H, H]);
    m.set(`${p}attn.c_proj.bias`, [H]);
    m.set(`${p}ln_2.weight`, [H]);
    m.set(`${p}ln_2.bias`, [H]);
    m.set(`${p}mlp.c_fc.weight`, [H, c.n_inner]);
    m.set(`${p}mlp.c_fc.bias`, [c.n_inner]);
    m.set(`${p}mlp.c_proj.weight`, [c.n_inner, H]);
    m.set(`${p}mlp.c_proj.bias`, [H]);
  }
  m.set('ln_f.weight', [H]);
  m.set('ln_f.bias', [H]);
  return m;
}

/** The untied output projection; GPT-2 ties it to `wte`, and a checkpoint may carry its own. */
export const lmHead = (c: Gpt2Config) => ({ name: 'lm_head.weight', shape: [c.vocab_size, c.n_embd] });

// Causal-mask buffers that older HF versions saved with the weights; steerd builds its own mask.
const IGNORED = /^h\.\d+\.attn\.(bias|masked_bias)$/;

/**
 * Maps a stored key to its canonical name: `transformer.h.0...` and `h.0...` are the same tensor;
 * undefined for a mask buffer.
 */
export function canonicalKey(key: string): string | undefined {
  const name = key.startsWith('transformer.') ? key.slice('transformer.'.length) : key;
  return IGNORED.test(name) ? undefined : name;
}

/**
 * The weights of the float16 copy (half-weights.ts), in file order: the blocks' four linear maps,
 * nearly all of a GPT-2's weights outside the embeddings.
 */
export function halfNames(nLayer: number): string[] {
  const names: string[] = [];
  for (let l = 0; l < nLayer; l++)
    for (const m of ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']) names.push(`h.${l}.${m}.weight`);
  return names;
}
