import { join } from 'node:path';
import { QUANT_BITS, type QuantDtype } from './dtypes.js';
import { type Checkpoint, headParam } from './family.js';
import { type LinearLayout, QUANT_BLOCK, type Quantized, quantBlocks, quantize } from './quantize.js';
import type { TensorEntry } from './safetensors.js';
import { type CopiedTensor, copyLayout, ensureCopy, sourceStamp } from './weights-copy.js';

/**
 * The 8- and 4-bit copies of a checkpoint's weights (`dtype: int8 | int4`), written once beside
 * `model.safetensors` like the float16 copy: the blocks' linear maps (the family's `halfNames`) and
 * the unembedding, each as `{name}.q` (uint8 blocks) and `{name}.scales` (float32), quantized by
 * quantize.ts. The embeddings, norms and biases are read from the float32 weights.
 */
export const QUANT_WEIGHTS_FILE: Record<QuantDtype, string> = {
  int8: 'model.q8.safetensors',
  int4: 'model.q4.safetensors',
};

/** One quantized matrix: its canonical name, how it is stored and its logical [K, N]. */
export interface QuantMatrix {
  name: string;
  layout: LinearLayout;
  K: number;
  N: number;
}

/** The matrices a copy holds: the blocks' linear maps, then the unembedding ([V, H]: out_in). */
export function quantMatrices(ck: Checkpoint): QuantMatrix[] {
  const of = (name: string, layout: LinearLayout): QuantMatrix => {
    const [rows, cols] = ck.params.get(name)!.shape;
    return layout === 'in_out' ? { name, layout, K: rows, N: cols } : { name, layout, K: cols, N: rows };
  };
  return [...ck.family.halfNames(ck.config).map((n) => of(n, ck.family.linearLayout)), of(headParam(ck), 'out_in')];
}

function quantTensors(ck: Checkpoint, dtype: QuantDtype): CopiedTensor[] {
  const bits = QUANT_BITS[dtype];
  // each matrix is quantized once for its two tensors (written one after the other)
  let last: { name: string; out: Quantized } | undefined;
  const quantized = (m: QuantMatrix, raw: Buffer): Quantized => {
    if (last?.name !== m.name) {
      const w = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
      last = { name: m.name, out: quantize(w, m.K, m.N, m.layout, bits) };
    }
    return last.out;
  };
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return quantMatrices(ck).flatMap((m) => {
    const src = ck.params.get(m.name)!;
    const source = { file: ck.weightsFile, offset: src.offset, length: src.length };
    const blocks = quantBlocks(m.K);
    return [
      {
        name: `${m.name}.q`,
        shape: [m.N, blocks, (QUANT_BLOCK * bits) / 8],
        dtype: 'U8' as const,
        source,
        convert: (raw) => bytes(quantized(m, raw).q),
      },
      {
        name: `${m.name}.scales`,
        shape: [m.N * blocks],
        dtype: 'F32' as const,
        source,
        convert: (raw) => bytes(quantized(m, raw).scales),
      },
    ];
  });
}

/** The copy's layout, a function of the checkpoint's layout alone (the graph points into it before it is written). */
export function quantLayout(
  ck: Checkpoint,
  dtype: QuantDtype,
  stamp?: string,
): { header: Buffer; entries: Map<string, TensorEntry> } {
  return copyLayout(quantTensors(ck, dtype), ck.fingerprint, stamp);
}

/**
 * Writes the copy unless it is there already (same header, same size); atomic (weights-copy.ts).
 * Returns true when it wrote.
 */
export function ensureQuantWeights(ck: Checkpoint, dtype: QuantDtype): boolean {
  return ensureCopy(
    join(ck.dir, QUANT_WEIGHTS_FILE[dtype]),
    quantTensors(ck, dtype),
    ck.fingerprint,
    sourceStamp([ck.weightsFile]),
  );
}
