import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint } from './family.js';
import { halfBits } from './half.js';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';
import { safetensorsHeader, writeSafetensors } from './safetensors-write.js';

/**
 * The float16 copy of a checkpoint's weights for GPU providers (`dtype: float16`), written once
 * beside `model.safetensors`: the blocks' linear maps, which the family names (GPT-2: the four of
 * each block, gpt2/params.ts). The graph multiplies them in float16 and keeps the rest in float32
 * (serve-graph.ts, gpt2/body.ts): the norms, attention's softmax, biases, the residual stream and
 * the logits.
 */
export const HALF_WEIGHTS_FILE = 'model.f16.safetensors';

/** The weights' dtypes a graph can be built for. */
export const DTYPES = ['float32', 'float16'] as const;
export type Dtype = (typeof DTYPES)[number];

/** The width of the source stamp in the copy's header: its offsets do not depend on the stamp. */
const STAMP_WIDTH = 64;

/**
 * What identifies the source weights file without reading it: size, modification time and inode
 * (the layout fingerprint alone would not see weights overwritten in place by others of the same shape).
 */
function sourceStamp(ck: Checkpoint): string {
  const st = statSync(ck.weightsFile, { bigint: true });
  return `${st.size}:${st.mtimeNs}:${st.ino}`.padEnd(STAMP_WIDTH).slice(0, STAMP_WIDTH);
}

/**
 * The copy's layout, a function of the checkpoint's layout alone (the stamp has a fixed width): the
 * graph can point into it before it is written.
 */
export function halfLayout(
  ck: Checkpoint,
  stamp = ' '.repeat(STAMP_WIDTH),
): { header: Buffer; entries: Map<string, TensorEntry> } {
  const specs = ck.family.halfNames(ck.config).map((name) => ({
    name,
    shape: ck.params.get(name)!.shape,
    dtype: 'F16' as const,
  }));
  // the source's fingerprint and stamp are in the header: another checkpoint's copy, or one made
  // before the weights were rewritten, never matches
  const { bytes, offsets } = safetensorsHeader(specs, { format: 'pt', source: ck.fingerprint, stamp });
  const entries = new Map<string, TensorEntry>();
  for (const s of specs) {
    const [from, to] = offsets.get(s.name)!;
    entries.set(s.name, {
      name: s.name,
      dtype: 'F16',
      shape: s.shape,
      offset: 8 + bytes.byteLength + from,
      length: to - from,
    });
  }
  return { header: bytes, entries };
}

/**
 * Writes the float16 copy unless it is there already (same header, same size); atomic (a temp
 * file written, flushed to disk and renamed into place), so a crash never leaves a torn copy.
 * Returns true when it wrote.
 */
export function ensureHalfWeights(ck: Checkpoint): boolean {
  const file = join(ck.dir, HALF_WEIGHTS_FILE);
  const stamp = sourceStamp(ck);
  const { header, entries } = halfLayout(ck, stamp);
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
  const fd = openSync(ck.weightsFile, 'r');
  try {
    writeSafetensors(
      tmp,
      ck.family.halfNames(ck.config).map((name) => {
        const src = ck.params.get(name)!;
        return {
          name,
          shape: src.shape,
          dtype: 'F16' as const,
          data: () => {
            const buf = Buffer.alloc(src.length);
            for (let done = 0; done < src.length; ) {
              const n = readSync(fd, buf, done, src.length - done, src.offset + done);
              if (n === 0) throw new Error(`${ck.weightsFile}: ${name} is cut short`);
              done += n;
            }
            const values = new Float32Array(buf.buffer, buf.byteOffset, src.length / 4);
            const bits = halfBits(values);
            return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
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
    closeSync(fd);
  }
  return true;
}
