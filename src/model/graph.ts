import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keysT, MASKED, repeatKv } from './attention.js';
import { openCheckpoint } from './checkpoint.js';
import type { Checkpoint } from './family.js';
import { ensureFloat32Weights } from './float32-weights.js';
import { BUILDER_VERSION, IR_VERSION, OPSET } from './graph-format.js';
import { DataType } from './onnx-proto.js';
import { encodeModel, GraphWriter, int } from './onnx-writer.js';
import { buildServeGraphBytes, type ServeGraphOptions } from './serve-graph.js';

/**
 * Builds the steerable graph (docs/architecture.md §3) from a checkpoint of any family (family.ts),
 * as an ONNX model whose weights are external data pointing into `model.safetensors`.
 *
 * Contract (names are what callers feed and fetch):
 *   in  input_ids       int64 [B, T]
 *   in  attention_mask  int64 [B, P+T]       1 = real token, 0 = padding (left-padded rows)
 *   in  position_ids    int64 [B, T]
 *   in  past.{l}.key / past.{l}.value  float32 [B, kv_heads, P, head_dim], l < n_layer (P may be 0)
 *   in  steer.{l}       float32, broadcastable to [B, T, n_embd], l <= n_layer
 *   out logits          float32 [B, T, V]
 *   out last_logits     float32 [B, V]       logits of the last position only
 *   out present.{l}.key / present.{l}.value   float32 [B, kv_heads, P+T, head_dim]
 *   out resid.{l}       float32 [B, T, n_embd]  the stream entering block l, after steering
 *
 * The engine runs a serving variant of the same transformer (serve-graph.ts).
 */

export const GRAPH_FILE = 'model.onnx';

/** The contract graph for a checkpoint, serialised. */
export function buildGraphBytes(ck: Checkpoint): Uint8Array {
  const model = ck.shape;
  const nkv = model.kvHeads;
  const hd = model.headDim;
  const V = model.vocab;
  const g = new GraphWriter();
  g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  g.input('attention_mask', DataType.INT64, ['batch', 'total']);
  g.input('position_ids', DataType.INT64, ['batch', 'seq']);
  for (let l = 0; l < model.layers; l++) {
    g.input(`past.${l}.key`, DataType.FLOAT, ['batch', nkv, 'past', hd]);
    g.input(`past.${l}.value`, DataType.FLOAT, ['batch', nkv, 'past', hd]);
  }

  const zero = g.constI('c.axis0', [0]);
  const one = g.constI('c.one', [1]);
  const zeroS = g.constI('c.zero_scalar', [0], []);
  const oneS = g.constI('c.one_scalar', [1], []);

  // --- attention bias [B, 1, T, P+T]: causal within the row and blind to padded keys, built once.
  const T = g.op1('Shape', ['input_ids'], [int('start', 1), int('end', 2)]); // [1]
  const S = g.op1('Shape', ['attention_mask'], [int('start', 1), int('end', 2)]); // [1] = P+T
  const P = g.op1('Sub', [S, T]); // [1]
  const Ss = g.op1('Squeeze', [S, zero]); // scalar
  const qPos = g.op1('Range', [g.op1('Squeeze', [P, zero]), Ss, oneS]); // [T] absolute positions of the new tokens
  const kPos = g.op1('Range', [zeroS, Ss, oneS]); // [S]
  const causal = g.op1('LessOrEqual', [g.op1('Unsqueeze', [kPos, zero]), g.op1('Unsqueeze', [qPos, one])]); // [T, S]
  const keep = g.op1('Cast', ['attention_mask'], [int('to', DataType.BOOL)]); // [B, S]
  const keep4 = g.op1('Unsqueeze', [keep, g.constI('c.axes12', [1, 2])]); // [B, 1, 1, S]
  const allowed = g.op1('And', [keep4, causal]); // [B, 1, T, S]
  const bias = g.op1('Where', [allowed, g.constF('c.zero_f', [0], []), g.constF('c.masked_f', [MASKED], [])]); // [B, 1, T, S]

  const rep = repeatKv(g, model.heads, nkv);
  const body = ck.family.body(g, ck, ({ layer: l, q, k, v }) => {
    const kAll = g.op1('Concat', [`past.${l}.key`, k], [int('axis', 2)], `present.${l}.key`); // [B, nkv, S, hd]
    const vAll = g.op1('Concat', [`past.${l}.value`, v], [int('axis', 2)], `present.${l}.value`); // [B, nkv, S, hd]
    const scores = g.op1('MatMul', [q, keysT(g, rep(kAll))]); // [B, nh, T, S]
    const probs = g.op1('Softmax', [g.op1('Add', [scores, bias])], [int('axis', -1)]); // [B, nh, T, S]
    return g.op1('MatMul', [probs, rep(vAll)]); // [B, nh, T, hd]
  });

  // ONNX Runtime runs every node whatever the caller fetches: `last_logits` is a slice of `logits`.
  const flat = g.op1(
    'Gemm',
    [g.op1('Reshape', [body.hf, g.constI('c.flat_shape', [-1, model.embd])]), body.head],
    [int('transB', 1)],
  ); // [B*T, V]
  const bt = g.op1('Shape', [body.hf], [int('end', 2)]); // [2] = (B, T)
  const logits = g.op1(
    'Reshape',
    [flat, g.op1('Concat', [bt, g.constI('c.vocab_dim', [V])], [int('axis', 0)])],
    [],
    'logits',
  ); // [B, T, V]
  const lastRow = g.op1('Slice', [logits, g.constI('c.last_start', [-1]), g.constI('c.int_max', [2 ** 53 - 1]), one]); // [B, 1, V]
  g.op1('Reshape', [lastRow, g.constI('c.last_shape', [0, V])], [], 'last_logits'); // [B, V]

  g.output('logits', DataType.FLOAT, ['batch', 'seq', V]);
  g.output('last_logits', DataType.FLOAT, ['batch', V]);
  for (let l = 0; l < model.layers; l++) {
    g.output(`present.${l}.key`, DataType.FLOAT, ['batch', nkv, 'total', hd]);
    g.output(`present.${l}.value`, DataType.FLOAT, ['batch', nkv, 'total', hd]);
  }
  return encodeModel(g, `${ck.family.id}_steerable`, {
    opset: OPSET,
    irVersion: IR_VERSION,
    producerVersion: BUILDER_VERSION,
    metadata: { 'steerd.builder': BUILDER_VERSION, 'steerd.config': JSON.stringify(ck.config) },
  });
}

export interface BuildResult {
  file: string;
  /** False when an up-to-date graph was already there. */
  built: boolean;
  checkpoint: Checkpoint;
}

/**
 * Writes `<dir>/model.onnx` (or the serving variant) unless the same graph is already there. The
 * graph sits beside `model.safetensors` because ONNX Runtime only resolves external data relative to
 * the graph's folder. The write is atomic (temp file + rename).
 */
export function buildGraph(
  dir: string,
  opts: {
    /** The engine's serving variant (serve-graph.ts) instead of the contract graph. Default none. */
    serving?: ServeGraphOptions;
    /** Write even when the same graph is there. Default false. */
    force?: boolean;
    /** File name inside `dir`. Default `model.onnx`. */
    fileName?: string;
  } = {},
): BuildResult {
  const ck = openCheckpoint(dir);
  // a checkpoint in bfloat16, float16 or shards: the float32 copy the graph maps, made once
  ensureFloat32Weights(ck);
  const file = join(dir, opts.fileName ?? GRAPH_FILE);
  // Building the graph is cheap (no weights are touched): build it and compare bytes, so that any
  // change of checkpoint layout or of this builder shows, without a version to remember to bump.
  const bytes = opts.serving ? buildServeGraphBytes(ck, opts.serving) : buildGraphBytes(ck);
  if (!opts.force && existsSync(file) && readFileSync(file).equals(bytes)) {
    return { file, built: false, checkpoint: ck };
  }
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, file);
  return { file, built: true, checkpoint: ck };
}
