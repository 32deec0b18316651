import { type Dtype, isQuantized, type WeightsCopy } from './dtypes.js';
import type { Checkpoint } from './family.js';
import { ensureHalfWeights, HALF_WEIGHTS_FILE, halfLayout } from './half-weights.js';
import { ensureQuantWeights, QUANT_WEIGHTS_FILE, quantLayout } from './quant-weights.js';

/** The copy a graph of `dtype` reads, by layout alone (it may not be written yet); none for float32. */
export function weightsCopy(ck: Checkpoint, dtype: Dtype): WeightsCopy | undefined {
  if (dtype === 'float16') return { dtype, file: HALF_WEIGHTS_FILE, entries: halfLayout(ck).entries };
  if (isQuantized(dtype)) return { dtype, file: QUANT_WEIGHTS_FILE[dtype], entries: quantLayout(ck, dtype).entries };
  return undefined;
}

/** Writes the copy of `dtype` beside the checkpoint unless it is there; true when it wrote. */
export function ensureWeightsCopy(ck: Checkpoint, dtype: Dtype): boolean {
  if (dtype === 'float16') return ensureHalfWeights(ck);
  if (isQuantized(dtype)) return ensureQuantWeights(ck, dtype);
  return false;
}
