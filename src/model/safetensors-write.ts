import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

/** A tensor to write: its data is produced on demand so that large files stream from memory. */
export interface TensorSpec {
  name: string;
  shape: number[];
  /** Defaults to F32. */
  dtype?: 'F32' | 'F16' | 'BF16' | 'U8';
  /** Returns the tensor's bytes (little-endian), exactly numel × dtype size long. */
  data: () => Uint8Array;
}

const BYTES = { F32: 4, F16: 2, BF16: 2, U8: 1 } as const;

/** The header of a `.safetensors` file of these tensors: its bytes, and each tensor's data offsets. */
export function safetensorsHeader(
  tensors: Omit<TensorSpec, 'data'>[],
  metadata: Record<string, string> = {},
): { bytes: Buffer; offsets: Map<string, [number, number]> } {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const offsets = new Map<string, [number, number]>();
  let offset = 0;
  for (const t of tensors) {
    const dtype = t.dtype ?? 'F32';
    const length = t.shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + length] };
    offsets.set(t.name, [offset, offset + length]);
    offset += length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  return { bytes: Buffer.from(json), offsets };
}

/**
 * Writes a `.safetensors` file: u64 header length, JSON header (padded with spaces to a multiple of
 * 8 so that the data is aligned), then the tensors back to back in the given order.
 */
export function writeSafetensors(file: string, tensors: TensorSpec[], metadata: Record<string, string> = {}): void {
  const { bytes: json, offsets } = safetensorsHeader(tensors, metadata);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.byteLength));
  const fd = openSync(file, 'w');
  /** writeSync may write less than asked (large buffers): until all of it is written. */
  const writeAll = (b: Uint8Array) => {
    for (let done = 0; done < b.byteLength; ) done += writeSync(fd, b, done, b.byteLength - done);
  };
  try {
    writeAll(prefix);
    writeAll(json);
    for (const t of tensors) {
      const bytes = t.data();
      const [from, to] = offsets.get(t.name)!;
      if (bytes.byteLength !== to - from) {
        throw new Error(`tensor ${t.name}: ${bytes.byteLength} bytes, expected ${to - from}`);
      }
      writeAll(bytes);
    }
    // on disk before the caller renames it into place: a power loss leaves the old file or this one
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
