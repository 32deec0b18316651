import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { type Checkpoint, openCheckpoint } from './checkpoint.js';
import { DataType } from './onnx-proto.js';
import { encodeModel, float, GraphWriter, int, ints, str } from './onnx-writer.js';

/**
 * Builds the steerable GPT-2 graph (DESIGN.md §3) from a checkpoint, as an ONNX model whose weights
 * are external data pointing into `model.safetensors`.
 *
 * Contract (names are what callers feed and fetch):
 *   in  input_ids       int64 [B, T]
 *   in  attention_mask  int64 [B, P+T]       1 = real token, 0 = padding (left-padded rows)
 *   in  position_ids    int64 [B, T]
 *   in  past.{l}.key / past.{l}.value  float32 [B, n_head, P, head_dim], l < n_layer (P may be 0)
 *   in  steer.{l}       float32, broadcastable to [B, T, n_embd], l <= n_layer
 *   out logits          float32 [B, T, V]
 *   out last_logits     float32 [B, V]       logits of the last position only
 *   out present.{l}.key / present.{l}.value   float32 [B, n_head, P+T, head_dim]
 *   out resid.{l}       float32 [B, T, n_embd]  the stream entering block l, after steering
 *
 * The serving variant (`serving`), for the engine that owns the model and keeps its own cache:
 *   in  logits_all      bool []              false: `logits` is [B, 1, V], the last position only
 *   out new.{l}.key / new.{l}.value   float32 [B, n_head, T, head_dim]  the new tokens' keys and
 *       values, instead of present.{l}.* (ONNX Runtime computes every output, fetched or not, and
 *       concatenating the cache would copy all of it at every step)
 *   out last_lse        float32 [B]          log-sum-exp of `last_logits` (the log-softmax
 *       normaliser, for the sampled token's logprob: one vectorised reduction in the session
 *       instead of an exp over the vocabulary per row on the engine thread)
 */

/** Recorded in the graph's metadata; informational (rebuilds are decided by content). */
export const BUILDER_VERSION = '1';
export const GRAPH_FILE = 'model.onnx';
const OPSET = 21;
const IR_VERSION = 10;

export interface GraphOptions {
  /** The engine's serving variant: `logits_all` input, `new.{l}.*` outputs. Default false. */
  serving?: boolean;
}

/** Serialises the steerable graph for a checkpoint. */
export function buildGraphBytes(ck: Checkpoint, opts: GraphOptions = {}): Uint8Array {
  const c = ck.config;
  const H = c.n_embd;
  const nh = c.n_head;
  const hd = H / nh;
  const V = c.vocab_size;
  const g = new GraphWriter();
  const location = basename(ck.weightsFile);
  const W = (name: string): string => {
    const e = ck.params.get(name);
    if (!e) throw new Error(`missing parameter ${name}`);
    return g.external(name, e.shape, location, e.offset, e.length);
  };

  g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  g.input('attention_mask', DataType.INT64, ['batch', 'total']);
  g.input('position_ids', DataType.INT64, ['batch', 'seq']);
  for (let l = 0; l < c.n_layer; l++) {
    g.input(`past.${l}.key`, DataType.FLOAT, ['batch', nh, 'past', hd]);
    g.input(`past.${l}.value`, DataType.FLOAT, ['batch', nh, 'past', hd]);
  }
  // Any rank up to 3 that broadcasts against [B, T, H]; the shape is left open on purpose.
  for (let l = 0; l <= c.n_layer; l++) g.input(`steer.${l}`, DataType.FLOAT);
  if (opts.serving) g.input('logits_all', DataType.BOOL, []);

  const zero = g.constI('c.axis0', [0]);
  const one = g.constI('c.one', [1]);
  const zeroS = g.constI('c.zero_scalar', [0], []);
  const oneS = g.constI('c.one_scalar', [1], []);
  const headShape = g.constI('c.head_shape', [0, 0, nh, hd]); // [B, T, H] -> [B, T, nh, hd]
  const mergeShape = g.constI('c.merge_shape', [0, 0, H]); // [B, T, nh, hd] -> [B, T, H]
  const flatShape = g.constI('c.flat_shape', [-1, H]);
  const lastShape = g.constI('c.last_shape', [0, V]);
  const vocabDim = g.constI('c.vocab_dim', [V]);
  const qScale = g.constF('c.q_scale', [1 / Math.sqrt(hd)], []);
  const zeroF = g.constF('c.zero_f', [0], []);
  // The most negative float32, as HF uses: masked scores vanish in softmax, and a fully masked row
  // (a padding query) stays finite instead of becoming NaN.
  const maskedF = g.constF('c.masked_f', [-3.4028234663852886e38], []);

  // --- attention bias [B, 1, T, P+T]: causal within the row and blind to padded keys, built once.
  const T = g.op1('Shape', ['input_ids'], [int('start', 1), int('end', 2)]); // [1]
  const S = g.op1('Shape', ['attention_mask'], [int('start', 1), int('end', 2)]); // [1] = P+T
  const P = g.op1('Sub', [S, T]); // [1]
  const Ss = g.op1('Squeeze', [S, zero]); // scalar
  const Ps = g.op1('Squeeze', [P, zero]); // scalar
  const qPos = g.op1('Range', [Ps, Ss, oneS]); // [T] absolute positions of the new tokens
  const kPos = g.op1('Range', [zeroS, Ss, oneS]); // [S]
  const causal = g.op1('LessOrEqual', [g.op1('Unsqueeze', [kPos, zero]), g.op1('Unsqueeze', [qPos, one])]); // [T, S]
  const keep = g.op1('Cast', ['attention_mask'], [int('to', DataType.BOOL)]); // [B, S]
  const keep4 = g.op1('Unsqueeze', [keep, g.constI('c.axes12', [1, 2])]); // [B, 1, 1, S]
  const allowed = g.op1('And', [keep4, causal]); // [B, 1, T, S]
  const bias = g.op1('Where', [allowed, zeroF, maskedF]); // [B, 1, T, S]

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
  const linear = (input: string, prefix: string) =>
    g.op1('Add', [g.op1('MatMul', [input, W(`${prefix}.weight`)]), W(`${prefix}.bias`)]);
  const splitHeads = (t: string) =>
    g.op1('Transpose', [g.op1('Reshape', [t, headShape])], [ints('perm', [0, 2, 1, 3])]); // [B, nh, T, hd]

  for (let l = 0; l < c.n_layer; l++) {
    const p = `h.${l}`;
    x = g.op1('Add', [x, `steer.${l}`], [], `resid.${l}`); // [B, T, H] hook l, after steering
    const a = ln(x, `${p}.ln_1`); // [B, T, H]
    const qkv = linear(a, `${p}.attn.c_attn`); // [B, T, 3H]
    const [q, k, v] = g.op('Split', [qkv], [int('axis', 2), int('num_outputs', 3)], 3); // 3 x [B, T, H]
    const qh = g.op1('Mul', [splitHeads(q), qScale]); // [B, nh, T, hd], pre-scaled by 1/sqrt(hd)
    const kNew = g.op1(
      'Transpose',
      [g.op1('Reshape', [k, headShape])],
      [ints('perm', [0, 2, 1, 3])],
      opts.serving ? `new.${l}.key` : undefined,
    ); // [B, nh, T, hd]
    const vNew = g.op1(
      'Transpose',
      [g.op1('Reshape', [v, headShape])],
      [ints('perm', [0, 2, 1, 3])],
      opts.serving ? `new.${l}.value` : undefined,
    ); // [B, nh, T, hd]
    const kT = (t: string) => g.op1('Transpose', [t], [ints('perm', [0, 1, 3, 2])]); // [B, nh, hd, *]
    let ctx: string;
    if (!opts.serving) {
      const kAll = g.op1('Concat', [`past.${l}.key`, kNew], [int('axis', 2)], `present.${l}.key`); // [B, nh, S, hd]
      const vAll = g.op1('Concat', [`past.${l}.value`, vNew], [int('axis', 2)], `present.${l}.value`); // [B, nh, S, hd]
      const probs = g.op1('Softmax', [g.op1('Add', [g.op1('MatMul', [qh, kT(kAll)]), bias])], [int('axis', -1)]); // [B, nh, T, S]
      ctx = g.op1('MatMul', [probs, vAll]); // [B, nh, T, hd]
    } else {
      // The serving variant has no present.* outputs: it attends to the cache and to the new
      // tokens separately and never copies the cache (only the small score rows are joined).
      const sPast = g.op1('MatMul', [qh, kT(`past.${l}.key`)]); // [B, nh, T, P]
      const sNew = g.op1('MatMul', [qh, kT(kNew)]); // [B, nh, T, T]
      const probs = g.op1(
        'Softmax',
        [g.op1('Add', [g.op1('Concat', [sPast, sNew], [int('axis', 3)]), bias])],
        [int('axis', -1)],
      ); // [B, nh, T, S]
      const [pPast, pNew] = g.op('Split', [probs, g.op1('Concat', [P, T], [int('axis', 0)])], [int('axis', 3)], 2); // [B, nh, T, P], [B, nh, T, T]
      ctx = g.op1('Add', [g.op1('MatMul', [pPast, `past.${l}.value`]), g.op1('MatMul', [pNew, vNew])]); // [B, nh, T, hd]
    }
    const merged = g.op1('Reshape', [g.op1('Transpose', [ctx], [ints('perm', [0, 2, 1, 3])]), mergeShape]); // [B, T, H]
    x = g.op1('Add', [x, linear(merged, `${p}.attn.c_proj`)]); // [B, T, H]
    const m = ln(x, `${p}.ln_2`); // [B, T, H]
    const hidden = g.op1('Gelu', [linear(m, `${p}.mlp.c_fc`)], [str('approximate', 'tanh')]); // [B, T, n_inner]
    x = g.op1('Add', [x, linear(hidden, `${p}.mlp.c_proj`)]); // [B, T, H]
  }
  x = g.op1('Add', [x, `steer.${c.n_layer}`], [], `resid.${c.n_layer}`); // [B, T, H] before ln_f
  const hf = ln(x, 'ln_f'); // [B, T, H]

  // GPT-2 ties the output projection to the token embedding: logits = h @ wte^T (Gemm transB),
  // unless the checkpoint carries its own lm_head. ONNX Runtime runs every node whatever the caller
  // fetches, so `last_logits` is a slice of `logits` (a decode step projects its one position once)
  // and the serving variant's `logits_all` = false projects only the last position of a prefill.
  const head = ck.tiedLmHead ? 'wte.weight' : W('lm_head.weight');
  const start = opts.serving
    ? g.op1('Where', ['logits_all', zero, g.constI('c.minus_one', [-1])]) // [1]: 0 or -1
    : zero;
  const hSel = g.op1('Slice', [hf, start, g.constI('c.int_max', [2 ** 53 - 1]), one]); // [B, T or 1, H]
  const flat = g.op1('Gemm', [g.op1('Reshape', [hSel, flatShape]), head], [int('transB', 1)]); // [B*T', V]
  const bt = g.op1('Shape', [hSel], [int('end', 2)]); // [2] = (B, T')
  const logits = g.op1('Reshape', [flat, g.op1('Concat', [bt, vocabDim], [int('axis', 0)])], [], 'logits'); // [B, T', V]
  const lastRow = g.op1('Slice', [logits, g.constI('c.last_start', [-1]), 'c.int_max', one]); // [B, 1, V]
  g.op1('Reshape', [lastRow, lastShape], [], 'last_logits'); // [B, V]
  if (opts.serving)
    g.op1('ReduceLogSumExp', ['last_logits', g.constI('c.vocab_axis', [1])], [int('keepdims', 0)], 'last_lse'); // [B]

  g.output('logits', DataType.FLOAT, ['batch', 'seq_out', V]);
  g.output('last_logits', DataType.FLOAT, ['batch', V]);
  if (opts.serving) g.output('last_lse', DataType.FLOAT, ['batch']);
  if (!opts.serving) {
    for (let l = 0; l < c.n_layer; l++) {
      g.output(`present.${l}.key`, DataType.FLOAT, ['batch', nh, 'total', hd]);
      g.output(`present.${l}.value`, DataType.FLOAT, ['batch', nh, 'total', hd]);
    }
  }
  for (let l = 0; l <= c.n_layer; l++) g.output(`resid.${l}`, DataType.FLOAT, ['batch', 'seq', H]);
  if (opts.serving) {
    for (let l = 0; l < c.n_layer; l++) {
      g.output(`new.${l}.key`, DataType.FLOAT, ['batch', nh, 'seq', hd]);
      g.output(`new.${l}.value`, DataType.FLOAT, ['batch', nh, 'seq', hd]);
    }
  }

  return encodeModel(g, 'gpt2_steerable', {
    opset: OPSET,
    irVersion: IR_VERSION,
    producerVersion: BUILDER_VERSION,
    metadata: { 'steerd.builder': BUILDER_VERSION, 'steerd.config': JSON.stringify(c) },
  });
}

export interface BuildResult {
  file: string;
  /** False when an up-to-date graph was already there. */
  built: boolean;
  checkpoint: Checkpoint;
}

/**
 * Writes `<dir>/model.onnx` unless the same graph is already there. The graph sits beside `model.safetensors` because ONNX Runtime only resolves external data
 * relative to the graph's folder. The write is atomic (temp file + rename).
 */
export function buildGraph(
  dir: string,
  opts: GraphOptions & {
    /** Write even when the same graph is there. Default false. */
    force?: boolean;
    /** File name inside `dir`. Default `model.onnx`. */
    fileName?: string;
  } = {},
): BuildResult {
  const ck = openCheckpoint(dir);
  const file = join(dir, opts.fileName ?? GRAPH_FILE);
  // Building the graph is cheap (no weights are touched): build it and compare bytes, so that any
  // change of checkpoint layout or of this builder shows, without a version to remember to bump.
  const bytes = buildGraphBytes(ck, opts);
  if (!opts.force && existsSync(file) && readFileSync(file).equals(bytes)) {
    return { file, built: false, checkpoint: ck };
  }
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, file);
  return { file, built: true, checkpoint: ck };
}
