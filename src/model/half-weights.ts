import { join } from 'node:path';
import type { Checkpoint } from './family.js';
import { halfBits } from './half.js';
import type { TensorEntry } from './safetensors.js';
import { type CopiedTensor, copyLayout, ensureCopy, sourceStamp } from './weights-copy.js';

/**
 * The float16 copy of a checkpoint's weights for GPU providers (`dtype: float16`), written once
 * beside `model.safetensors`: the blocks' linear maps, which the family names (GPT-2: the four of
 * each block, gpt2/params.ts). The graph multiplies them in float16 and keeps the rest in float32
 * (serve-graph.ts, gpt2/body.ts): the norms, attention's softmax, biases, the residual stream and
 * the logits.
 */
export const HALF_WEIGHTS_FILE = 'model.f16.safetensors';

/** The copy's tensors: the family's linear maps, from the float32 weights file. */
function halfTensors(ck: Checkpoint): CopiedTensor[] {
  return ck.family.halfNames(ck.config).map((name) => {
    const src = ck.params.get(name)!;
    return {
      name,
      shape: src.shape,
      dtype: 'F16' as const,
      source: { file: ck.weightsFile, offset: src.offset, length: src.length },
      convert: (raw) => {
        const bits = halfBits(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4));
        return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
      },
    };
  });
}

/**
 * The copy's layout, a function of the checkpoint's layout alone (the stamp has a fixed width): the
 * graph can point into it before it is written.
 */
export function halfLayout(ck: Checkpoint, stamp?: string): { header: Buffer; entries: Map<string, TensorEntry> } {
  return copyLayout(halfTensors(ck), ck.fingerprint, stamp);
}

/**
 * Writes the float16 copy unless it is there already (same header, same size); atomic, so a crash
 * never leaves a torn copy (weights-copy.ts). Returns true when it wrote.
 */
export function ensureHalfWeights(ck: Checkpoint): boolean {
  return ensureCopy(join(ck.dir, HALF_WEIGHTS_FILE), halfTensors(ck), ck.fingerprint, sourceStamp([ck.weightsFile]));
}
