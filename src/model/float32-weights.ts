import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint } from './family.js';
import { fromHalf } from './half.js';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';
import { safetensorsHeader, writeSafetensors } from './safetensors-write.js';
import type { StoredTensor } from './weight-files.js';

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

/** The source stamp's width in the copy's header: its offsets do not depend on the stamp. */
const STAMP_WIDTH = 64;

/** The dtypes a stored parameter may have, and how each becomes float32. */
export const CONVERTIBLE = ['F32', 'BF16', 'F16'] as const;

/** The copy's layout (a function of the parameters' names and shapes): the graph can point into it before it is written. */
export function float32Layout(
  params: Map<string, StoredTensor>,
  fingerprint: string,
  stamp = ' '.repeat(STAMP_WIDTH),
): { header: Buffer; entries: Map<string, TensorEntry> } {
  const specs = [...params.keys()]
    .sort()
    .map((name) => ({ name, shape: params.get(name)!.shape, dtype: 'F32' as const }));
  const { bytes, offsets } = safetensorsHeader(specs, { format: 'pt', source: fingerprint, stamp });
  const entries = new Map<string, TensorEntry>();
  for (const s of specs) {
    const [from, to] = offsets.get(s.name)!;
    entries.set(s.name, {
      name: s.name,
      dtype: 'F32',
      shape: s.shape,
      offset: 8 + bytes.byteLength + from,
      length: to - from,
    });
  }
  return { header: bytes, entries };
}

/** Size, modification time and inode of every source file, hashed: weights rewritten in place show. */
function sourceStamp(files: string[]): string {
  const h = createHash('sha256');
  for (const f of files) {
    const st = statSync(f, { bigint: true });
    h.update(`${f}:${st.size}:${st.mtimeNs}:${st.ino};`);
  }
  return h.digest('hex').slice(0, STAMP_WIDTH);
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
 * (same header, sources unchanged); atomic (temp file, flushed, renamed). Returns true when it wrote.
 */
export function ensureFloat32Weights(ck: Checkpoint): boolean {
  if (!ck.sources) return false;
  const sources = ck.sources;
  const file = join(ck.dir, FLOAT32_WEIGHTS_FILE);
  const stamp = sourceStamp([...new Set([...sources.values()].map((s) => s.file))].sort());
  const { header, entries } = float32Layout(sources, ck.fingerprint, stamp);
  const size = 8 + header.byteLength + [...entries.values()].reduce((a, e) => a + e.length, 0);
  if (existsSync(file)) {
    try {
      const h = readSafetensorsHeader(file);
      if (h.headerBytes.equals(header) && h.size === size) return false;
    } catch {
      // unreadable: written again below
    }
  }
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fds = new Map<string, number>();
  const fdOf = (f: string) => fds.get(f) ?? fds.set(f, openSync(f, 'r')).get(f)!;
  try {
    writeSafetensors(
      tmp,
      [...entries.keys()].map((name) => {
        const src = sources.get(name)!;
        return {
          name,
          shape: src.shape,
          dtype: 'F32' as const,
          data: () => {
            const buf = Buffer.alloc(src.length);
            for (let done = 0; done < src.length; ) {
              const n = readSync(fdOf(src.file), buf, done, src.length - done, src.offset + done);
              if (n === 0) throw new Error(`${src.file}: ${src.name} is cut short`);
              done += n;
            }
            const f32 = toFloat32(buf, src.dtype);
            return new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
          },
        };
      }),
      { format: 'pt', source: ck.fingerprint, stamp },
    );
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return true;
}
