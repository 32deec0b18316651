import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';
import { safetensorsHeader, writeSafetensors } from './safetensors-write.js';

/**
 * A copy of a checkpoint's weights in another form, written once beside it: the float16 copy
 * (half-weights.ts), the 8- and 4-bit copies (quant-weights.ts) and the float32 copy
 * (float32-weights.ts). Its header holds the source's
 * fingerprint and a stamp of the source files, of a fixed width, so that the layout is a function of
 * the tensors alone (the graph can point into the copy before it is written) and a copy made from
 * another checkpoint, or before the weights were rewritten, never matches.
 */
export const STAMP_WIDTH = 64;

/**
 * What identifies source files without reading them: each one's path, size, modification time and
 * inode, hashed to the stamp's width (a fingerprint of the layout alone would not see weights
 * rewritten in place by others of the same shape).
 */
export function sourceStamp(files: string[]): string {
  const h = createHash('sha256');
  for (const f of [...new Set(files)].sort()) {
    const st = statSync(f, { bigint: true });
    h.update(`${f}:${st.size}:${st.mtimeNs}:${st.ino};`);
  }
  return h.digest('hex').slice(0, STAMP_WIDTH);
}

/** A tensor of the copy, read from `file` at `offset` (`length` bytes) and converted by `convert`. */
export interface CopiedTensor {
  name: string;
  shape: number[];
  dtype: 'F32' | 'F16' | 'U8';
  /** Where its source bytes are. */
  source: { file: string; offset: number; length: number };
  convert(raw: Buffer): Uint8Array;
}

/** The copy's header and where each tensor will be in it. */
export function copyLayout(
  tensors: Omit<CopiedTensor, 'source' | 'convert'>[],
  fingerprint: string,
  stamp = ' '.repeat(STAMP_WIDTH),
): { header: Buffer; entries: Map<string, TensorEntry> } {
  const { bytes, offsets } = safetensorsHeader(tensors, { format: 'pt', source: fingerprint, stamp });
  const entries = new Map<string, TensorEntry>();
  for (const s of tensors) {
    const [from, to] = offsets.get(s.name)!;
    entries.set(s.name, {
      name: s.name,
      dtype: s.dtype,
      shape: s.shape,
      offset: 8 + bytes.byteLength + from,
      length: to - from,
    });
  }
  return { header: bytes, entries };
}

/**
 * Writes the copy to `file` unless it is there already (same header, same size); atomic (a temp
 * file written, flushed to disk and renamed into place), so a crash never leaves a torn copy.
 * Returns true when it wrote.
 */
export function ensureCopy(file: string, tensors: CopiedTensor[], fingerprint: string, stamp: string): boolean {
  const { header, entries } = copyLayout(tensors, fingerprint, stamp);
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
      tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        dtype: t.dtype,
        data: () => {
          const { file: from, offset, length } = t.source;
          const buf = Buffer.alloc(length);
          for (let done = 0; done < length; ) {
            const n = readSync(fdOf(from), buf, done, length - done, offset + done);
            if (n === 0) throw new Error(`${from}: ${t.name} is cut short`);
            done += n;
          }
          return t.convert(buf);
        },
      })),
      { format: 'pt', source: fingerprint, stamp },
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
