import type { ModelFamily } from '../family.js';
import { SITES } from '../hooks.js';
import { gpt2Body } from './body.js';
import { type Gpt2Config, parseConfig } from './config.js';
import { canonicalKey, expectedShapes, halfNames, lmHead } from './params.js';
import { Gpt2Tokenizer } from './tokenizer.js';

/** GPT-2 (Radford et al. 2019) and checkpoints of its layout: Hugging Face's `model_type: "gpt2"`. */
export const GPT2: ModelFamily<Gpt2Config> = {
  id: 'gpt2',
  name: 'GPT-2',
  norm: 'layernorm',
  modelTypes: ['gpt2'],
  sites: SITES,
  parseConfig,
  shape: (c) => ({
    layers: c.n_layer,
    embd: c.n_embd,
    heads: c.n_head,
    kvHeads: c.n_head,
    headDim: c.n_embd / c.n_head,
    vocab: c.vocab_size,
    ctx: c.n_positions,
    eos: c.eos_token_id,
  }),
  parameters: expectedShapes,
  head: lmHead,
  embedding: 'wte.weight',
  linearLayout: 'in_out',
  canonicalKey,
  halfNames: (c) => halfNames(c.n_layer),
  body: gpt2Body,
  tokenizer: (dir) => Gpt2Tokenizer.fromDir(dir),
};
