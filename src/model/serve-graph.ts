import { SteerdError } from '../errors.js';
import { keysT, MASKED, repeatKv } from './attention.js';
import type { Dtype } from './dtypes.js';
import type { Checkpoint } from './family.js';
import { BUILDER_VERSION, IR_VERSION, OPSET } from './graph-format.js';
import { hookPoints, readName, type Site } from './hooks.js';
import { DataType } from './onnx-proto.js';
import { encodeModel, GraphWriter, int } from './onnx-writer.js';
import { weightsCopy } from './weights-copies.js';

/**
 * The engine's serving variant of the steerable graph (docs/architecture.md §3). Same transformer, same
 * `steer.{l}` inputs and `resid.{l}` outputs as the contract graph (graph.ts); what differs is how
 * the KV cache is held: the engine keeps it, in size groups, and the graph never copies it.
 *
 *   in  input_ids, position_ids   int64 [B, T]   rows right-padded (a row's real tokens come first)
 *   in  new_len       int64 [B]      real new tokens of each row (1..T)
 *   in  past_len      int64 [B]      tokens each row already holds in its group's cache
 *   in  group_rows    int64 [G]      rows of each group; the batch is ordered by group (Σ = B)
 *   in  past.{l}.{g}.key / .value    float32 [B_g, kv_heads, P_g, head_dim]: group g's cache; row b
 *                     holds its tokens at slots [0, past_len[b]), the rest is never attended
 *   in  steer.{l}     float32, broadcastable to [B, T, n_embd]
 *   in  logits_all    bool []        true: `logits` has every position; false: none (T' = 0)
 *   out last_logits   float32 [B, V] logits at each row's last real token (new_len − 1)
 *   out last_lse      float32 [B]    log-sum-exp of `last_logits` (the log-softmax normaliser)
 *   out logits        float32 [B, T', V]
 *   out new.{l}.key / .value         float32 [B, kv_heads, T, head_dim]: the new tokens' keys and values
 *   out resid.{l}     float32 [B, T, n_embd]
 *
 * The device variant (`device`, for WebGPU: the engine keeps the cache on the accelerator, kv-graph.ts)
 * differs in what crosses host memory, since an output is either always on the device or always on
 * the host there: no tensor is ever empty (the provider crashed on zero-size tensors), the hook
 * points are read through one output, `reads` [R, B, T, n_embd], the ones `read_idx` [R] picks (in
 * hookPoints order), and `logits` and `lens_logits` hold one column unless `logits_all` and
 * `lens_all` ask for all of them.
 *
 * Batch invariance (a row's logits do not depend on what shares its batch, bit for bit): every
 * reduction a row takes part in runs over its own data with the padding at the end. A query's scores
 * are laid out [new tokens | cached tokens | unused cache slots]: the new tokens sit at fixed indices
 * whatever the group's slot count P_g, and masked slots (exp → 0) only ever trail, which leaves
 * ONNX Runtime's softmax and matrix products unchanged to the last bit (measured; the engine tests
 * check it). Rows are split into groups by size so that a short row never attends over a long
 * row's slots: each group has its own slot count.
 */

export interface ServeGraphOptions {
  /** Cache groups: `past.{l}.{g}` inputs per layer, g < groups. Default 1. */
  groups?: number;
  /** Hook sites with steering inputs and outputs (hooks.ts). Default all the family wires. */
  sites?: readonly Site[];
  /**
   * The device variant (above): no tensor of the graph is ever empty (ONNX Runtime's WebGPU provider
   * crashes on zero-size tensors): `logits` has at least the last position and one column, and
   * callers feed at least one cache slot, projection row, read index and lens vector (zeros where
   * unused). Default false.
   */
  device?: boolean;
  /**
   * With `device`: the host variant's arithmetic kept (its Split and Concat around the attention with
   * one group, and `last_lse` from maxima), so that on the CPU provider a row's bits are the host
   * graph's (the capi binding's device cache, whose CPU path is checked bit for bit against
   * onnxruntime-node's host path), and the host variant's `logits` and `lens_logits`, which may be
   * empty, as the projections and the lens vectors fed may be (only WebGPU could not take zero-size
   * tensors; the one column the device variant keeps costs a whole unembedding per pass, and a zero
   * projection row a product at every hook point). Without it the device variant does what WebGPU
   * measured faster.
   * Default false.
   */
  exact?: boolean;
  /** The dtype of the blocks' linear maps (dtypes.ts), read from the copy beside the weights. Default float32. */
  dtype?: Dtype;
}

export function buildServeGraphBytes(ck: Checkpoint, opts: ServeGraphOptions = {}): Uint8Array {
  const model = ck.shape;
  const nkv = model.kvHeads;
  const hd = model.headDim;
  const V = model.vocab;
  const G = opts.groups ?? 1;
  const sites = opts.sites ?? ck.family.sites;
  const unwired = sites.filter((site) => !ck.family.sites.includes(site));
  if (unwired.length) {
    // the sites come from the server's configuration (STEERD_HOOK_SITES)
    throw new SteerdError(
      `${ck.family.name} has no hook site ${unwired.join(', ')} (it has ${ck.family.sites.join(', ')})`,
      500,
      'bad_config',
    );
  }
  const g = new GraphWriter();
  g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  g.input('position_ids', DataType.INT64, ['batch', 'seq']);
  g.input('new_len', DataType.INT64, ['batch']);
  g.input('past_len', DataType.INT64, ['batch']);
  g.input('group_rows', DataType.INT64, [G]);
  for (let l = 0; l < model.layers; l++) {
    for (let k = 0; k < G; k++) {
      g.input(`past.${l}.${k}.key`, DataType.FLOAT, [`rows_${k}`, nkv, `slots_${k}`, hd]);
      g.input(`past.${l}.${k}.value`, DataType.FLOAT, [`rows_${k}`, nkv, `slots_${k}`, hd]);
    }
  }
  g.input('logits_all', DataType.BOOL, []);
  g.input('lens_in', DataType.FLOAT, ['lens', model.embd]);
  const device = opts.device ?? false;
  if (device) {
    g.input('read_idx', DataType.INT64, ['reads']);
    g.input('lens_all', DataType.BOOL, []);
  }

  const zero = g.constI('c.axis0', [0]);
  const one = g.constI('c.one', [1]);
  const zeroS = g.constI('c.zero_scalar', [0], []);
  const oneS = g.constI('c.one_scalar', [1], []);
  const zeroF = g.constF('c.zero_f', [0], []);
  const maskedF = g.constF('c.masked_f', [MASKED], []);

  // --- attention bias per group, [B_g, 1, T, T + P_g], built once: a new token sees the row's real
  // new tokens up to itself, then the row's cached tokens.
  const T = g.op1('Shape', ['input_ids'], [int('start', 1), int('end', 2)]); // [1]
  const j = g.op1('Range', [zeroS, g.op1('Squeeze', [T, zero]), oneS]); // [T]
  const causal = g.op1('LessOrEqual', [g.op1('Unsqueeze', [j, zero]), g.op1('Unsqueeze', [j, one])]); // [T(query), T(key)]
  const newLen3 = g.op1('Unsqueeze', ['new_len', g.constI('c.axes12', [1, 2])]); // [B, 1, 1]
  const realNew = g.op1('Less', [j, newLen3]); // [B, 1, T(key)]
  const seesNew = g.op1('Unsqueeze', [g.op1('And', [causal, realNew]), one]); // [B, 1, T, T]
  // on the host even one group goes through Split and Concat: the graph then has the same nodes
  // around the attention as with several groups, which ONNX Runtime fuses the same way (without
  // them, one group's logits differed in the last bits from the same row's in a graph of several)
  const exact = opts.exact ?? false;
  const unsplit = G === 1 && device && !exact;
  const split = (t: string) => (unsplit ? [t] : g.op('Split', [t, 'group_rows'], [int('axis', 0)], G));
  const seesNewG = split(seesNew);
  const pastLenG = split(g.op1('Unsqueeze', ['past_len', g.constI('c.axes123', [1, 2, 3])])); // [B_g, 1, 1, 1]
  const slots: string[] = [];
  const bias: string[] = [];
  for (let k = 0; k < G; k++) {
    const P = g.op1('Shape', [`past.0.${k}.key`], [int('start', 2), int('end', 3)]); // [1]
    slots.push(P);
    const s = g.op1('Range', [zeroS, g.op1('Squeeze', [P, zero]), oneS]); // [P_g]
    const seesPast = g.op1('Less', [s, pastLenG[k]]); // [B_g, 1, 1, P_g]
    const shape = g.op1('Concat', [g.op1('Shape', [seesNewG[k]], [int('end', 3)]), P], [int('axis', 0)]); // [4]
    const sees = g.op1('Concat', [seesNewG[k], g.op1('Expand', [seesPast, shape])], [int('axis', 3)]); // [B_g, 1, T, T+P_g]
    bias.push(g.op1('Where', [sees, zeroF, maskedF]));
  }

  const kvName = (l: number, kind: 'key' | 'value') => `new.${l}.${kind}`;
  const rep = repeatKv(g, model.heads, nkv);
  const body = ck.family.body(
    g,
    ck,
    ({ layer: l, q, k, v }) => {
      const qs = split(q);
      const ks = split(rep(k)); // [B_g, nh, T, hd] each
      const vs = split(rep(v));
      const ctx = qs.map((qg, x) => {
        const sNew = g.op1('MatMul', [qg, keysT(g, ks[x])]); // [B_g, nh, T, T]
        const sPast = g.op1('MatMul', [qg, keysT(g, rep(`past.${l}.${x}.key`))]); // [B_g, nh, T, P_g]
        const scores = g.op1('Add', [g.op1('Concat', [sNew, sPast], [int('axis', 3)]), bias[x]]); // [B_g, nh, T, T+P_g]
        const probs = g.op1('Softmax', [scores], [int('axis', -1)]);
        const [pNew, pPast] = g.op(
          'Split',
          [probs, g.op1('Concat', [T, slots[x]], [int('axis', 0)])],
          [int('axis', 3)],
          2,
        );
        return g.op1('Add', [g.op1('MatMul', [pNew, vs[x]]), g.op1('MatMul', [pPast, rep(`past.${l}.${x}.value`)])]); // [B_g, nh, T, hd]
      });
      return unsplit ? ctx[0] : g.op1('Concat', ctx, [int('axis', 0)]); // [B, nh, T, hd]
    },
    kvName,
    {
      sites,
      hookOutputs: !device,
      copy: weightsCopy(ck, opts.dtype ?? 'float32'),
    },
  );

  // Each row's last real token, projected alone: a decode step and a prefill both project B rows.
  const lastIdx = g.op1('Unsqueeze', [g.op1('Sub', ['new_len', one]), one]); // [B, 1]
  const hLast = g.op1('GatherND', [body.hf, lastIdx], [int('batch_dims', 1)]); // [B, H]
  body.unembed(hLast, 'last_logits'); // [B, V]
  // log Σ exp = max − max(log-softmax): the log-softmax of a row is computed on its own (one thread
  // per row) and both reductions are maxima, exact in any order, so a row's bits do not depend on
  // the other rows (a ReduceSum of exponentials did: the invariance test caught it). 3-6x faster than
  // ReduceLogSumExp at 8 and 32 rows; the two agree within 2e-6 relative.
  // ReduceLogSumExp on the device, as measured there (WebGPU), unless the host's bits are asked.
  if (device && !exact)
    g.op1('ReduceLogSumExp', ['last_logits', one], [int('keepdims', 0)], 'last_lse'); // [B]
  else {
    const maxLogit = g.op1('ReduceMax', ['last_logits', one], [int('keepdims', 0)]); // [B]
    const logSoftmax = g.op1('LogSoftmax', ['last_logits'], [int('axis', -1)]); // [B, V]
    g.op1('Sub', [maxLogit, g.op1('ReduceMax', [logSoftmax, one], [int('keepdims', 0)])], [], 'last_lse'); // [B]
  }
  // Every position only when asked (prompt logprobs): otherwise the slice is empty and costs nothing
  // (or, on the device, holds the last position's first logit: one float crosses host memory).
  // (the exact variant: the host's, `slim` below)
  const slim = device && !exact;
  const none = slim ? g.op1('Sub', [T, one]) : T; // the empty slice, or just the last position
  const start = g.op1('Where', ['logits_all', zero, none]); // [1]
  const hAll = g.op1('Slice', [body.hf, start, g.constI('c.int_max', [2 ** 53 - 1]), one]); // [B, T', H]
  const flat = body.unembed(g.op1('Reshape', [hAll, g.constI('c.flat_shape', [-1, model.embd])])); // [B*T', V]
  const bt = g.op1('Shape', [hAll], [int('end', 2)]); // [2] = (B, T')
  const btv = g.op1('Concat', [bt, g.constI('c.vocab_dim', [V])], [int('axis', 0)]); // [3]
  const logits = g.op1('Reshape', [flat, btv], [int('allowzero', 1)], slim ? undefined : 'logits'); // [B, T', V] (T' may be 0: allowzero keeps it)
  const vocab = slim ? g.constI('c.vocab', [V]) : '';
  const cols = (all: string) => g.op1('Where', [all, vocab, one]); // [1]: V or 1
  if (slim) g.op1('Slice', [logits, zero, cols('logits_all'), g.constI('c.axis2', [2])], [], 'logits'); // [B, T', V or 1]

  // The logit lens (vector diagnostics): vectors [N, H] through the final norm alone, then the
  // unembedding. N = 0 in every generation pass: it costs nothing there.
  const lensLn = body.norm('lens_in'); // [N, H]
  const lens = body.unembed(lensLn, slim ? undefined : 'lens_logits'); // [N, V]
  if (slim) g.op1('Slice', [lens, zero, cols('lens_all'), one], [], 'lens_logits'); // [N, V or 1]

  // The hook points on the device: the ones asked, stacked (hooks.ts order).
  if (device) {
    const points = hookPoints(model.layers, sites).map(({ site, layer }) =>
      g.op1('Unsqueeze', [readName(site, layer), zero]),
    ); // [1, B, T, H] each
    const all = g.op1('Concat', points, [int('axis', 0)]); // [hooks, B, T, H]
    g.op1('Gather', [all, 'read_idx'], [int('axis', 0)], 'reads'); // [R, B, T, H]
    g.output('reads', DataType.FLOAT, ['reads', 'batch', 'seq', model.embd]);
  }

  g.output('last_logits', DataType.FLOAT, ['batch', V]);
  g.output('lens_logits', DataType.FLOAT, ['lens', slim ? 'vocab_lens' : V]);
  g.output('last_lse', DataType.FLOAT, ['batch']);
  g.output('logits', DataType.FLOAT, ['batch', 'seq_out', slim ? 'vocab_out' : V]);
  for (let l = 0; l < model.layers; l++) {
    g.output(kvName(l, 'key'), DataType.FLOAT, ['batch', nkv, 'seq', hd]);
    g.output(kvName(l, 'value'), DataType.FLOAT, ['batch', nkv, 'seq', hd]);
  }
  return encodeModel(g, `${ck.family.id}_steerable_serving`, {
    opset: OPSET,
    irVersion: IR_VERSION,
    producerVersion: BUILDER_VERSION,
    metadata: {
      'steerd.builder': BUILDER_VERSION,
      'steerd.config': JSON.stringify(ck.config),
      'steerd.groups': String(G),
      'steerd.device': String(device),
      ...(exact && { 'steerd.exact': 'true' }),
      'steerd.dtype': opts.dtype ?? 'float32',
      'steerd.sites': sites.join(','),
    },
  });
}
