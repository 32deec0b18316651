import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { halfBits } from './half.js';
import { type TensorSpec, writeSafetensors } from './safetensors-write.js';
import { INDEX_FILE, WEIGHTS_FILE } from './weight-files.js';

/** How a random checkpoint's weights are stored, as published checkpoints store theirs. */
export interface StorageOptions {
  /** `float32`, `bfloat16` (as most Llama-family checkpoints are published) or `float16`. Default float32. */
  dtype?: 'float32' | 'bfloat16' | 'float16';
  /** Files: 1 writes `model.safetensors`; more write `model-0000i-of-0000n.safetensors` and the index. Default 1. */
  shards?: number;
}

/** The bfloat16 bits of float32 values, rounded to nearest, ties to even (as torch's conversion rounds). */
export function bfloat16Bits(values: Float32Array): Uint16Array {
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u.length; i++) {
    const b = u[i];
    if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff)
      out[i] = (b >>> 16) | 0x40; // NaN stays NaN
    else out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Writes float32 tensor specs as `opts` says: one file or shards with their index, in the dtype asked for. */
export function writeWeights(dir: string, specs: TensorSpec[], opts: StorageOptions = {}): void {
  const dtype = opts.dtype ?? 'float32';
  const shards = opts.shards ?? 1;
  const stored: TensorSpec[] =
    dtype === 'float32'
      ? specs
      : specs.map((s) => ({
          ...s,
          dtype: dtype === 'bfloat16' ? 'BF16' : 'F16',
          data: () => {
            const raw = s.data();
            const f32 = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
            const bits = dtype === 'bfloat16' ? bfloat16Bits(f32) : halfBits(f32);
            return new Uint8Array(bits.buffer);
          },
        }));
  if (shards === 1) {
    writeSafetensors(join(dir, WEIGHTS_FILE), stored, { format: 'pt' });
    return;
  }
  if (!Number.isInteger(shards) || shards < 1 || shards > stored.length)
    throw new RangeError(`shards must be an integer from 1 to ${stored.length} (the tensors), not ${shards}`);
  const pad = (i: number) => String(i).padStart(5, '0');
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let k = 0; k < shards; k++) {
    const part = stored.slice(Math.floor((k * stored.length) / shards), Math.floor(((k + 1) * stored.length) / shards));
    const file = `model-${pad(k + 1)}-of-${pad(shards)}.safetensors`;
    writeSafetensors(join(dir, file), part, { format: 'pt' });
    for (const t of part) {
      weightMap[t.name] = file;
      totalSize += t.shape.reduce((a, b) => a * b, 1) * (dtype === 'float32' ? 4 : 2);
    }
  }
  writeFileSync(
    join(dir, INDEX_FILE),
    `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`,
  );
}
