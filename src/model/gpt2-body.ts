import { basename } from 'node:path';
import type { Checkpoint } from './checkpoint.js';
import { hookPoints, projName, readName, SITES, type Site, steerName } from './hooks.js';
import { DataType } from './onnx-proto.js';
import { float, type GraphWriter, int, ints, str } from './onnx-writer.js';
import type { TensorEntry } from './safetensors.js';

/**
 * The GPT-2 transformer both graphs share (graph.ts: the contract graph; serve-graph.ts: the
 * engine's serving variant): embeddings, the blocks with their `steer.{l}` hooks and `resid.{l}`
 * outputs, and ln_f. Attention is the caller's: the two graphs hold the KV cache differently.
 */

/** Recorded in the graphs' metadata; informational (rebuilds are decided by content). */
export const BUILDER_VERSION = '2';
export const OPSET = 21;
export const IR_VERSION = 10;

/** Per layer: the new tokens' queries (pre-scaled by 1/√hd), keys and values, each [B, nh, T, hd]. */
export interface AttentionInput {
  layer: number;
  q: string;
  k: string;
  v: string;
}

export interface Body {
  /** ln_f's output: [B, T, H]. */
  hf: string;
  /** Weight lookup: an external initializer pointing into model.safetensors. */
  W(name: string): string;
  /** The unembedding: `wte` (GPT-2 ties it) or the checkpoint's own `lm_head`. */
  head: string;
}

export function gpt2Body(
  g: GraphWriter,
  ck: Checkpoint,
  /** Returns the attention context [B, nh, T, hd] of layer `layer`. */
  attend: (a: AttentionInput) => string,
  /** Names the new keys and values of layer l (the serving graph outputs them). */
  kvName?: (l: number, kind: 'key' | 'value') => string,
  opts: {
    /** Hook sites with steering inputs and outputs (hooks.ts); the others pass through. Default all. */
    sites?: readonly Site[];
    /** Each hook point is a graph output (false: the caller reads them, by their names). Default true. */
    hookOutputs?: boolean;
    /**
     * Linear maps multiplied in float16, their weights from the float16 copy (half-weights.ts): the
     * input is cast to float16 and the product back to float32, the bias added in float32. Default
     * none: all float32.
     */
    half?: { file: string; entries: Map<string, TensorEntry> };
  } = {},
): Body {
  const sites = opts.sites ?? SITES;
  const hookOutputs = opts.hookOutputs ?? true;
  const c = ck.config;
  const H = c.n_embd;
  const nh = c.n_head;
  const hd = H / nh;
  const location = basename(ck.weightsFile);
  const registered = new Set<string>();
  const W = (name: string): string => {
    if (registered.has(name)) return name;
    const e = ck.params.get(name);
    if (!e) throw new Error(`missing parameter ${name}`);
    registered.add(name);
    return g.external(name, e.shape, location, e.offset, e.length);
  };
  for (const { site, layer } of hookPoints(c.n_layer, sites)) {
    // any rank up to 3 that broadcasts against [B, T, H]: the shape is left open on purpose
    g.input(steerName(site, layer), DataType.FLOAT);
    g.input(projName(site, layer, 'u'), DataType.FLOAT, [`pb_${site}_${layer}`, `pk_${site}_${layer}`, H]);
    g.input(projName(site, layer, 'z'), DataType.FLOAT, [`pb_${site}_${layer}`, `pk_${site}_${layer}`, H]);
    if (hookOutputs) g.output(readName(site, layer), DataType.FLOAT, ['batch', 'seq', H]);
  }
  const hook = (site: Site, l: number, x: string) => {
    if (!sites.includes(site)) return x;
    const p = g.op1('MatMul', [x, g.op1('Transpose', [projName(site, l, 'u')], [ints('perm', [0, 2, 1])])]); // [B, T, K]
    const d = g.op1('MatMul', [p, projName(site, l, 'z')]); // [B, T, H]: zero when K = 0
    return g.op1('Add', [g.op1('Sub', [x, d]), steerName(site, l)], [], readName(site, l)); // [B, T, H]
  };

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
  const linear = (input: string, prefix: string) => {
    const half = opts.half?.entries.get(`${prefix}.weight`);
    if (!half) return g.op1('Add', [g.op1('MatMul', [input, W(`${prefix}.weight`)]), W(`${prefix}.bias`)]);
    const w16 = `${prefix}.weight.f16`;
    if (!registered.has(w16)) {
      registered.add(w16);
      g.external(w16, half.shape, opts.half!.file, half.offset, half.length, DataType.FLOAT16);
    }
    const x16 = g.op1('Cast', [input], [int('to', DataType.FLOAT16)]); // [B, T, in] float16
    const y = g.op1('Cast', [g.op1('MatMul', [x16, w16])], [int('to', DataType.FLOAT)]); // [B, T, out] float32
    return g.op1('Add', [y, W(`${prefix}.bias`)]);
  };
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
  return { hf: ln(x, 'ln_f'), W, head: ck.tiedLmHead ? 'wte.weight' : W('lm_head.weight') };
}

/** The transposed keys [B, nh, hd, S] of a [B, nh, S, hd] tensor (ONNX Runtime fuses it into the MatMul). */
export const keysT = (g: GraphWriter, t: string) => g.op1('Transpose', [t], [ints('perm', [0, 1, 3, 2])]);

/** The most negative float32, as HF uses: masked scores vanish in softmax, and a fully masked row
 * (a padding query) stays finite instead of becoming NaN. */
export const MASKED = -3.4028234663852886e38;
