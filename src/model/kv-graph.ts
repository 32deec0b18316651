import { BUILDER_VERSION, IR_VERSION, OPSET } from './graph-format.js';
import { DataType } from './onnx-proto.js';
import { encodeModel, GraphWriter, int, ints } from './onnx-writer.js';

/**
 * The cache update graph of a device-resident KV cache (docs/architecture.md §6). A cache held on
 * the accelerator cannot be edited from the host: every change to it (rows joining, leaving or
 * moving, the slot count growing or shrinking, new tokens written after a row's last one, a row
 * zeroed) is one run of this graph, whose inputs and outputs stay on the device. Only the per-row
 * plan below crosses host memory: a few int64 per row, whatever the rows' lengths.
 *
 *   in  s.{l}.key / .value   float32 [R, n_head, P, head_dim]   the cache as it is
 *   in  f.{l}.key / .value   float32 [F, n_head, S, head_dim]   tokens to write (a pass's new keys
 *                            and values, or another cache)
 *   in  rows   int64 [R']    row of `s` that row i continues (any row when it keeps nothing)
 *   in  keep   int64 [R']    tokens kept from it: slots [0, keep)
 *   in  src    int64 [R']    row of `f` written after them
 *   in  from   int64 [R']    first token of that row written
 *   in  count  int64 [R']    tokens written: slots [keep, keep + count) = f[src, from .. from + count)
 *   in  slots  int64 [1]     P', the slot count of the result
 *   out o.{l}.key / .value   float32 [R', n_head, P', head_dim]; slots from keep + count on are zero
 *
 * Slots after a row's tokens are zeroed, never left over: masked slots still enter attention (the
 * mask is added to the scores), and a non-finite value left there by another row would poison it.
 */
export function buildKvGraphBytes(nLayer: number, nHead: number, headDim: number): Uint8Array {
  const g = new GraphWriter();
  const names: string[] = [];
  for (let l = 0; l < nLayer; l++) names.push(`${l}.key`, `${l}.value`);
  for (const n of names) {
    g.input(`s.${n}`, DataType.FLOAT, ['rows', nHead, 'slots', headDim]);
    g.input(`f.${n}`, DataType.FLOAT, ['src_rows', nHead, 'src_slots', headDim]);
  }
  for (const n of ['rows', 'keep', 'src', 'from', 'count']) g.input(n, DataType.INT64, ['out_rows']);
  g.input('slots', DataType.INT64, [1]);

  const zero = g.constI('c.zero', [0]);
  const one = g.constI('c.one', [1]);
  const two = g.constI('c.two', [2]);
  const zeroS = g.constI('c.zero_s', [0], []);
  const oneS = g.constI('c.one_s', [1], []);
  const zeroF = g.constF('c.zero_f', [0], []);
  const col = (t: string) => g.op1('Unsqueeze', [t, one]); // [R'] -> [R', 1]

  // the plan, shared by every layer: slot p of row i takes s (p < keep), f (p < keep + count) or 0
  const p = g.op1('Range', [zeroS, g.op1('Squeeze', ['slots', zero]), oneS]); // [P']
  const keep = col('keep'); // [R', 1]
  const fromS = g.op1('Less', [p, keep]); // [R', P']
  const fromF = g.op1('Less', [p, g.op1('Add', [keep, col('count')])]); // [R', P']
  const S = g.op1('Shape', ['f.0.key'], [int('start', 2), int('end', 3)]); // [1]
  const last = g.op1('Sub', [g.op1('Squeeze', [S, zero]), oneS]); // []
  const at = g.op1('Clip', [g.op1('Add', [g.op1('Sub', [p, keep]), col('from')]), zeroS, last]); // [R', P']: f's token at slot p
  const atIdx = g.op1('Unsqueeze', [at, two]); // [R', P', 1]
  const mask4 = (m: string) => g.op1('Unsqueeze', [m, g.constI(`c.axes_${m}`, [1, 3])]); // [R', 1, P', 1]
  const takeS = mask4(fromS);
  const takeF = mask4(fromF);
  // s resized to P' slots: padded with zeros, or cut (cut slots hold no kept token)
  const P = g.op1('Shape', ['s.0.key'], [int('start', 2), int('end', 3)]); // [1]
  const grow = g.op1('Max', [g.op1('Sub', ['slots', P]), zero]); // [1]
  const pads = g.op1('Concat', [g.constI('c.pads_head', [0, 0, 0, 0, 0, 0]), grow, zero], [int('axis', 0)]); // [8]

  for (const n of names) {
    const kept = g.op1('Gather', [`s.${n}`, 'rows'], [int('axis', 0)]); // [R', nh, P, hd]
    const padded = g.op1('Pad', [kept, pads]); // [R', nh, max(P, P'), hd]
    const sized = g.op1('Slice', [padded, zero, 'slots', two]); // [R', nh, P', hd]
    const rowsF = g.op1('Gather', [`f.${n}`, 'src'], [int('axis', 0)]); // [R', nh, S, hd]
    const tokens = g.op1('Transpose', [rowsF], [ints('perm', [0, 2, 1, 3])]); // [R', S, nh, hd]
    const placed = g.op1('GatherND', [tokens, atIdx], [int('batch_dims', 1)]); // [R', P', nh, hd]
    const written = g.op1('Transpose', [placed], [ints('perm', [0, 2, 1, 3])]); // [R', nh, P', hd]
    g.op1('Where', [takeS, sized, g.op1('Where', [takeF, written, zeroF])], [], `o.${n}`); // [R', nh, P', hd]
    g.output(`o.${n}`, DataType.FLOAT, ['out_rows', nHead, 'out_slots', headDim]);
  }
  return encodeModel(g, 'steerd_kv_update', {
    opset: OPSET,
    irVersion: IR_VERSION,
    producerVersion: BUILDER_VERSION,
  });
}
