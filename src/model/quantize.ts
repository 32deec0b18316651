/**
 * Block-wise symmetric quantization of a linear map for ONNX Runtime's `MatMulNBits` (com.microsoft):
 * for output column n and the k-th block of QUANT_BLOCK inputs, one float32 scale
 * s = max|w| / (2^(bits−1) − 1) and integers q = round(w / s) in [−(2^(bits−1) − 1), 2^(bits−1) − 1],
 * stored offset by the operator's default zero point 2^(bits−1) (no zero-point input), so that
 * w ≈ (stored − 2^(bits−1)) · s. A last partial block is padded with zeros.
 *
 * Layouts, as `MatMulNBits` reads them: `q` is uint8 [N, blocks, QUANT_BLOCK · bits / 8] (4 bits:
 * element 2i in the low nibble, 2i+1 in the high one), `scales` is float32 [N · blocks].
 */
export const QUANT_BLOCK = 32;

/** How a checkpoint stores a linear map y = x·W, x [.., K], y [.., N]. */
export type LinearLayout = 'in_out' | 'out_in';

export interface Quantized {
  q: Uint8Array;
  scales: Float32Array;
}

export const quantBlocks = (K: number) => Math.ceil(K / QUANT_BLOCK);

/** The quantized form of a weight matrix stored as `layout` ([K, N] for in_out, [N, K] for out_in). */
export function quantize(w: Float32Array, K: number, N: number, layout: LinearLayout, bits: 4 | 8): Quantized {
  if (w.length !== K * N) throw new Error(`quantize: ${w.length} weights for [${K}, ${N}]`);
  const blocks = quantBlocks(K);
  const blob = (QUANT_BLOCK * bits) / 8;
  const q = new Uint8Array(N * blocks * blob);
  const scales = new Float32Array(N * blocks);
  const qmax = 2 ** (bits - 1) - 1;
  const zero = 2 ** (bits - 1);
  // element (k, n) of the logical [K, N] matrix
  const at = layout === 'in_out' ? (k: number, n: number) => w[k * N + n] : (k: number, n: number) => w[n * K + k];
  const block = new Float64Array(QUANT_BLOCK);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < blocks; b++) {
      let max = 0;
      for (let i = 0; i < QUANT_BLOCK; i++) {
        const k = b * QUANT_BLOCK + i;
        const v = k < K ? at(k, n) : 0;
        block[i] = v;
        max = Math.max(max, Math.abs(v));
      }
      const s = Math.fround(max / qmax);
      scales[n * blocks + b] = s;
      const base = (n * blocks + b) * blob;
      for (let i = 0; i < QUANT_BLOCK; i++) {
        const v = s === 0 ? zero : Math.min(qmax, Math.max(-qmax, Math.round(block[i] / s))) + zero;
        if (bits === 8) q[base + i] = v;
        else q[base + (i >> 1)] |= i & 1 ? v << 4 : v;
      }
    }
  }
  return { q, scales };
}
