import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { CheckpointError } from '../errors.js';

/** Bytes per element of the dtypes a safetensors file may hold. */
const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** One tensor of a safetensors file, located by absolute byte offset (weights are not read). */
export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute offset of the first byte inside the file. */
  offset: number;
  /** Length in bytes. */
  length: number;
}

export interface SafetensorsHeader {
  file: string;
  /** Total file size in bytes. */
  size: number;
  /** The raw JSON header bytes (a fingerprint of the layout). */
  headerBytes: Buffer;
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
}

// A header larger than this is corrupt, not a model: the format's own readers cap it at 100 MB.
const MAX_HEADER = 100 * 1024 * 1024;

function readExactly(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}

/**
 * Reads the header of a `.safetensors` file: 8 bytes little-endian header length, the JSON header,
 * then the data block that the header's `data_offsets` index. Only the header is read.
 */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    throw new CheckpointError(file, `cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new CheckpointError(file, `truncated: ${size} bytes, too short for a safetensors header`);
    const n = Number(readExactly(fd, 8, 0).readBigUInt64LE(0));
    if (n > MAX_HEADER || 8 + n > size) {
      throw new CheckpointError(file, `corrupt header: declares ${n} header bytes in a ${size}-byte file`);
    }
    const headerBytes = readExactly(fd, n, 8);
    let json: unknown;
    try {
      json = JSON.parse(headerBytes.toString('utf8'));
    } catch (e) {
      throw new CheckpointError(file, `corrupt header: not valid JSON (${(e as Error).message})`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new CheckpointError(file, 'corrupt header: expected a JSON object');
    }
    const dataStart = 8 + n;
    const dataSize = size - dataStart;
    const tensors = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = (value ?? {}) as Record<string, string>;
        continue;
      }
      const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const bytes = typeof v?.dtype === 'string' ? DTYPE_BYTES[v.dtype] : undefined;
      const shape = v?.shape;
      const offs = v?.data_offsets;
      if (
        bytes === undefined ||
        !Array.isArray(shape) ||
        !shape.every((d) => Number.isInteger(d) && d >= 0) ||
        !Array.isArray(offs) ||
        offs.length !== 2 ||
        !offs.every((d) => Number.isInteger(d) && d >= 0)
      ) {
        throw new CheckpointError(file, `corrupt header: bad entry for tensor "${name}"`);
      }
      const [begin, end] = offs as [number, number];
      const numel = (shape as number[]).reduce((a, b) => a * b, 1);
      if (end < begin || end - begin !== numel * bytes) {
        throw new CheckpointError(
          file,
          `corrupt header: tensor "${name}" ${v.dtype}[${(shape as number[]).join(', ')}] spans ${end - begin} bytes, expected ${numel * bytes}`,
        );
      }
      if (end > dataSize) {
        throw new CheckpointError(
          file,
          `truncated: tensor "${name}" ends at byte ${dataStart + end} but the file has ${size} bytes`,
        );
      }
      tensors.set(name, {
        name,
        dtype: v.dtype as string,
        shape: shape as number[],
        offset: dataStart + begin,
        length: end - begin,
      });
    }
    return { file, size, headerBytes, metadata, tensors };
  } finally {
    closeSync(fd);
  }
}
