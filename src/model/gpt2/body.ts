import type { AttentionInput, Body, BodyOptions, Checkpoint } from '../family.js';
import { hookWiring } from '../hook-graph.js';
import { SITES } from '../hooks.js';
import { float, type GraphWriter, int, ints, str } from '../onnx-writer.js';
import { weights } from '../weights.js';
import type { Gpt2Config } from './config.js';

/**
 * GPT-2's forward pass, as nanoGPT writes it: token and learned position embeddings, then per block
 * x + attn(ln_1(x)) and x + mlp(ln_2(x)) with a tanh-GELU MLP, then ln_f. The hook sites sit where
 * TransformerLens puts them (hooks.ts). Attention is the caller's (family.ts).
 */
export function gpt2Body(
  g: GraphWriter,
  ck: Checkpoint<Gpt2Config>,
  attend: (a: AttentionInput) => string,
  kvName?: (l: number, kind: 'key' | 'value') => string,
  opts: BodyOptions = {},
): Body {
  const c = ck.config;
  const H = c.n_embd;
  const nh = c.n_head;
  const hd = H / nh;
  const { W, linear: affine, unembedding } = weights(g, ck, opts.copy);
  const hook = hookWiring(g, c.n_layer, H, opts.sites ?? SITES, opts.hookOutputs ?? true);

  const headShape = g.constI('c.head_shape', [0, 0, nh, hd]); // [B, T, H] -> [B, T, nh, hd]
  const mergeShape = g.constI('c.merge_shape', [0, 0, H]); // [B, T, nh, hd] -> [B, T, H]
  const qScale = g.constF('c.q_scale', [1 / Math.sqrt(hd)], []);

  // --- embeddings
  const tok = g.op1('Gather', [W('wte.weight'), 'input_ids']); // [B, T, H]
  const pos = g.op1('Gather', [W('wpe.weight'), 'position_ids']); // [B, T, H]
  let x = g.op1('Add', [tok, pos]); // [B, T, H]

  const ln = (input: string, prefix: string) =>
    g.op1(
      'LayerNormalization',
      [input, W(`${prefix}.weight`), W(`${prefix}.bias`)],
      [int('axis', -1), float('epsilon', c.layer_norm_epsilon)],
    );
  // HF's GPT-2 uses Conv1D layers whose weights are stored [in, out]: x @ W needs no transpose.
  const linear = (input: string, prefix: string) => affine(input, `${prefix}.weight`, 'in_out', `${prefix}.bias`); // [B, T, out]
  const heads = (t: string, name?: string) =>
    g.op1('Transpose', [g.op1('Reshape', [t, headShape])], [ints('perm', [0, 2, 1, 3])], name); // [B, nh, T, hd]

  for (let l = 0; l < c.n_layer; l++) {
    const p = `h.${l}`;
    x = hook('resid_pre', l, x); // [B, T, H] the stream entering block l, after steering
    const a = hook('ln1', l, ln(x, `${p}.ln_1`)); // [B, T, H]
    const qkv = linear(a, `${p}.attn.c_attn`); // [B, T, 3H]
    const [q, k, v] = g.op('Split', [qkv], [int('axis', 2), int('num_outputs', 3)], 3); // 3 x [B, T, H]
    const ctx = attend({
      layer: l,
      q: g.op1('Mul', [heads(q), qScale]), // [B, nh, T, hd]
      k: heads(k, kvName?.(l, 'key')), // [B, nh, T, hd]
      v: heads(v, kvName?.(l, 'value')), // [B, nh, T, hd]
    });
    const merged = g.op1('Reshape', [g.op1('Transpose', [ctx], [ints('perm', [0, 2, 1, 3])]), mergeShape]); // [B, T, H]
    x = g.op1('Add', [x, hook('attn_out', l, linear(merged, `${p}.attn.c_proj`))]); // [B, T, H]
    x = hook('resid_mid', l, x); // [B, T, H]
    const m = hook('ln2', l, ln(x, `${p}.ln_2`)); // [B, T, H]
    const hidden = g.op1('Gelu', [linear(m, `${p}.mlp.c_fc`)], [str('approximate', 'tanh')]); // [B, T, n_inner]
    x = g.op1('Add', [x, hook('mlp_out', l, linear(hidden, `${p}.mlp.c_proj`))]); // [B, T, H]
  }
  x = hook('resid_pre', c.n_layer, x); // [B, T, H] before ln_f
  // GPT-2 ties the output projection to the token embedding (logits = h @ wte^T), unless the
  // checkpoint carries its own lm_head.
  const head = ck.tiedLmHead ? 'wte.weight' : 'lm_head.weight';
  return {
    hf: ln(x, 'ln_f'), // [B, T, H]
    norm: (input) => ln(input, 'ln_f'),
    head: W(head),
    unembed: unembedding(head),
  };
}
