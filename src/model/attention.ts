import { type GraphWriter, ints } from './onnx-writer.js';

/** Pieces of attention that the contract graph and the serving graph share (the rest is how each holds the cache). */

/** The transposed keys [B, nh, hd, S] of a [B, nh, S, hd] tensor (ONNX Runtime fuses it into the MatMul). */
export const keysT = (g: GraphWriter, t: string) => g.op1('Transpose', [t], [ints('perm', [0, 1, 3, 2])]);

/** The most negative float32, as HF uses: masked scores vanish in softmax, and a fully masked row
 * (a padding query) stays finite instead of becoming NaN. */
export const MASKED = -3.4028234663852886e38;
