import { join } from 'node:path';
import type { Checkpoint } from './family.js';
import { fromHalf } from './half.js';
import type { TensorEntry } from './safetensors.js';
import type { StoredTensor } from './weight-files.js';
import { type CopiedTensor, copyLayout, ensureCopy, sourceStamp } from './weights-copy.js';

/**
 * The float32 copy of a checkpoint whose weights ONNX Runtime cannot map as they are: stored in
 * bfloat16 or float16 (as most Llama-family checkpoints are published), or sharded over several
 * files. Written once beside the checkpoint (in its serving folder), every parameter under its
 * canonical name in float32, so that the graphs, the float16 copy (half-weights.ts) and the engine
 * read one float32 file as they do a GPT-2 checkpoint's. The cost: disk of 4 bytes per parameter
 * (twice a bfloat16 checkpoint's size) and one pass over the weights at the first start; serving
 * memory is that of float32 weights (or of float16 ones with `dtype: float16`, made from this copy:
 * bfloat16 values beyond float16's range become infinite there, and float16 keeps 3 more mantissa
 * bits than bfloat16 has, so nothing else is lost).
 */
export const FLOAT32_WEIGHTS_FILE = 'model.f32.safetensors';

/** The dtypes a stored parameter may have, and how each becomes float32. */
export const CONVERTIBLE = ['F32', 'BF16', 'F16'] as const;

/** The copy's tensors: every parameter by canonical name, in name order, from where it is stored. */
function float32Tensors(params: Map<string, StoredTensor>): CopiedTensor[] {
  return [...params.keys()].sort().map((name) => {
    const src = params.get(name)!;
    return {
      name,
      shape: src.shape,
      dtype: 'F32' as const,
      source: src,
      convert: (raw) => {
        const f32 = toFloat32(raw, src.dtype);
        return new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
      },
    };
  });
}

/** The copy's layout (a function of the parameters' names and shapes): the graph can point into it before it is written. */
export function float32Layout(
  params: Map<string, StoredTensor>,
  fingerprint: string,
  stamp?: string,
): { header: Buffer; entries: Map<string, TensorEntry> } {
  return copyLayout(float32Tensors(params), fingerprint, stamp);
}

/** A stored tensor's bytes as float32 values. */
function toFloat32(raw: Buffer, dtype: string): Float32Array {
  if (dtype === 'F32') return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const bits = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
  const out = new Float32Array(bits.length);
  if (dtype === 'BF16') {
    // bfloat16 is the upper half of a float32: the conversion is exact
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  } else for (let i = 0; i < bits.length; i++) out[i] = fromHalf(bits[i]);
  return out;
}

/**
 * Writes the float32 copy of a checkpoint that needs one (`ck.sources`) unless it is there already
 * (same header, sources unchanged); atomic (weights-copy.ts). Returns true when it wrote.
 */
export function ensureFloat32Weights(ck: Checkpoint): boolean {
  if (!ck.sources) return false;
  const files = [...ck.sources.values()].map((s) => s.file);
  return ensureCopy(join(ck.dir, FLOAT32_WEIGHTS_FILE), float32Tensors(ck.sources), ck.fingerprint, sourceStamp(files));
}
