import { type GraphWriter, int, ints } from './onnx-writer.js';

/** Pieces of attention that the contract graph and the serving graph share (the rest is how each holds the cache). */

/** The transposed keys [B, nh, hd, S] of a [B, nh, S, hd] tensor (ONNX Runtime fuses it into the MatMul). */
export const keysT = (g: GraphWriter, t: string) => g.op1('Transpose', [t], [ints('perm', [0, 1, 3, 2])]);

/** The most negative float32, as HF uses: masked scores vanish in softmax, and a fully masked row
 * (a padding query) stays finite instead of becoming NaN. */
export const MASKED = -3.4028234663852886e38;

/**
 * Grouped-query attention (docs/architecture.md §6): a function that repeats each head of keys or
 * values [B, kvHeads, S, hd] heads/kvHeads times, giving [B, heads, S, hd], so that query head h
 * meets key/value head floor(h / (heads/kvHeads)). The cache keeps the kvHeads heads; only the
 * products see the copies. With as many key/value heads as query heads it is the identity and adds
 * no node (GPT-2's graphs stay as they were).
 */
export function repeatKv(g: GraphWriter, heads: number, kvHeads: number): (t: string) => string {
  if (heads === kvHeads) return (t) => t;
  const rep = heads / kvHeads;
  const [c0, c1, c2, c4] = [0, 1, 2, 4].map((v) => g.constI(`c.gqa_${v}`, [v]));
  const groups = g.constI('c.gqa_groups', [kvHeads, rep]);
  const all = g.constI('c.gqa_heads', [heads]);
  return (t) => {
    const shape = g.op1('Shape', [t]); // [4] = (B, kvHeads, S, hd)
    const lead = g.op1('Slice', [shape, c0, c1]); // [1] = (B)
    const tail = g.op1('Slice', [shape, c2, c4]); // [2] = (S, hd)
    const wide = g.op1('Concat', [lead, groups, tail], [int('axis', 0)]); // [5]
    const expanded = g.op1('Expand', [g.op1('Unsqueeze', [t, c2]), wide]); // [B, kvHeads, rep, S, hd]
    const shape4 = g.op1('Concat', [lead, all, tail], [int('axis', 0)]); // [4]
    // allowzero: an empty cache (S = 0) is a zero to keep, not "copy the input's dimension"
    return g.op1('Reshape', [expanded, shape4], [int('allowzero', 1)]); // [B, heads, S, hd]
  };
}
