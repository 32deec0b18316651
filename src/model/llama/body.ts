import type { AttentionInput, Body, BodyOptions, Checkpoint } from '../family.js';
import { hookWiring } from '../hook-graph.js';
import { SITES } from '../hooks.js';
import { DataType } from '../onnx-proto.js';
import { type GraphWriter, int, ints } from '../onnx-writer.js';
import { weights } from '../weights.js';
import type { LlamaConfig } from './config.js';
import { invFreq } from './rope.js';

/**
 * The Llama family's forward pass: token embeddings, then per block x + o_proj(attn(RMSNorm(x)))
 * with RoPE on the queries and keys, and x + down(silu(gate(m)) · up(m)) with m = RMSNorm(x), then
 * a final RMSNorm. The hook sites sit where GPT-2's do (hooks.ts): ln1 and ln2 are the RMSNorms'
 * outputs. Attention is the caller's (family.ts); keys and values have the config's key/value heads.
 */
export function llamaBody(
  g: GraphWriter,
  ck: Checkpoint<LlamaConfig>,
  attend: (a: AttentionInput) => string,
  kvName?: (l: number, kind: 'key' | 'value') => string,
  opts: BodyOptions = {},
): Body {
  const c = ck.config;
  const H = c.hidden_size;
  const nh = c.num_attention_heads;
  const nkv = c.num_key_value_heads;
  const hd = c.head_dim;
  const { W, linear: affine, unembedding } = weights(g, ck, opts.copy);
  const hook = hookWiring(g, c.num_hidden_layers, H, opts.sites ?? SITES, opts.hookOutputs ?? true);

  const mergeShape = g.constI('c.merge_shape', [0, 0, nh * hd]); // [B, T, nh, hd] -> [B, T, nh·hd]
  const qScale = g.constF('c.q_scale', [1 / Math.sqrt(hd)], []);
  const lastAxis = g.constI('c.last_axis', [-1]);
  const eps = g.constF('c.rms_eps', [c.rms_norm_eps], []);
  const two = g.constF('c.two', [2], []);

  // RMSNorm: x / sqrt(mean(x²) + eps) · w, written as Hugging Face's export writes it (Pow, ReduceMean,
  // Add, Sqrt, Div, Mul), the pattern ONNX Runtime fuses into one kernel (SimplifiedLayerNormalization).
  const rms = (input: string, weight: string) => {
    const ms = g.op1('ReduceMean', [g.op1('Pow', [input, two]), lastAxis], [int('keepdims', 1)]); // [.., 1]
    const normed = g.op1('Div', [input, g.op1('Sqrt', [g.op1('Add', [ms, eps])])]); // [.., H]
    return g.op1('Mul', [normed, W(weight)]); // [.., H]
  };
  // HF's nn.Linear weights are stored [out, in]: x @ Wᵀ (weights.ts).
  const linear = (input: string, prefix: string, bias: boolean) =>
    affine(input, `${prefix}.weight`, 'out_in', bias ? `${prefix}.bias` : undefined); // [B, T, out]
  const headShape = new Map([...new Set([nh, nkv])].map((n) => [n, g.constI(`c.heads_${n}`, [0, 0, n, hd])])); // [B, T, n·hd] -> [B, T, n, hd]
  const heads = (t: string, n: number, name?: string) =>
    g.op1('Transpose', [g.op1('Reshape', [t, headShape.get(n)!])], [ints('perm', [0, 2, 1, 3])], name); // [B, n, T, hd]

  // --- RoPE tables from the positions, once for every layer: angle = position · inv_freq, and
  // cos, sin of [angle, angle] (HF's rotate-half layout: the two halves of a head share frequencies).
  const freq = g.constF('c.inv_freq', invFreq(c), [hd / 2]);
  const pos = g.op1('Unsqueeze', [g.op1('Cast', ['position_ids'], [int('to', DataType.FLOAT)]), lastAxis]); // [B, T, 1]
  const angle = g.op1('Mul', [pos, freq]); // [B, T, hd/2]
  const emb = g.op1('Unsqueeze', [g.op1('Concat', [angle, angle], [int('axis', -1)]), g.constI('c.axis1', [1])]); // [B, 1, T, hd]
  const cos = g.op1('Cos', [emb]); // [B, 1, T, hd]
  const sin = g.op1('Sin', [emb]); // [B, 1, T, hd]
  // x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] for the halves x₁, x₂ of each head
  const rope = (x: string, name?: string) => {
    const [x1, x2] = g.op('Split', [x], [int('axis', -1), int('num_outputs', 2)], 2); // [B, n, T, hd/2] each
    const rotated = g.op1('Concat', [g.op1('Neg', [x2]), x1], [int('axis', -1)]); // [B, n, T, hd]
    return g.op1('Add', [g.op1('Mul', [x, cos]), g.op1('Mul', [rotated, sin])], [], name); // [B, n, T, hd]
  };

  // --- embeddings: no position embedding, positions enter through RoPE
  let x = g.op1('Gather', [W('model.embed_tokens.weight'), 'input_ids']); // [B, T, H]

  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    x = hook('resid_pre', l, x); // [B, T, H] the stream entering block l, after steering
    const a = hook('ln1', l, rms(x, `${p}.input_layernorm.weight`)); // [B, T, H]
    const q = heads(linear(a, `${p}.self_attn.q_proj`, c.qkv_bias), nh); // [B, nh, T, hd]
    const k = heads(linear(a, `${p}.self_attn.k_proj`, c.qkv_bias), nkv); // [B, nkv, T, hd]
    const v = heads(linear(a, `${p}.self_attn.v_proj`, c.qkv_bias), nkv, kvName?.(l, 'value')); // [B, nkv, T, hd]
    const ctx = attend({
      layer: l,
      q: g.op1('Mul', [rope(q), qScale]), // [B, nh, T, hd]
      k: rope(k, kvName?.(l, 'key')), // [B, nkv, T, hd]: the cache holds keys after RoPE
      v,
    });
    const merged = g.op1('Reshape', [g.op1('Transpose', [ctx], [ints('perm', [0, 2, 1, 3])]), mergeShape]); // [B, T, nh·hd]
    x = g.op1('Add', [x, hook('attn_out', l, linear(merged, `${p}.self_attn.o_proj`, c.o_bias))]); // [B, T, H]
    x = hook('resid_mid', l, x); // [B, T, H]
    const m = hook('ln2', l, rms(x, `${p}.post_attention_layernorm.weight`)); // [B, T, H]
    const gate = linear(m, `${p}.mlp.gate_proj`, false); // [B, T, inner]
    const act = g.op1('Mul', [gate, g.op1('Sigmoid', [gate])]); // [B, T, inner] silu
    const hidden = g.op1('Mul', [act, linear(m, `${p}.mlp.up_proj`, false)]); // [B, T, inner]
    x = g.op1('Add', [x, hook('mlp_out', l, linear(hidden, `${p}.mlp.down_proj`, false))]); // [B, T, H]
  }
  x = hook('resid_pre', c.num_hidden_layers, x); // [B, T, H] before the final norm
  const head = ck.tiedLmHead ? 'model.embed_tokens.weight' : 'lm_head.weight';
  return {
    hf: rms(x, 'model.norm.weight'), // [B, T, H]
    norm: (input) => rms(input, 'model.norm.weight'),
    head: W(head),
    unembed: unembedding(head),
  };
}
