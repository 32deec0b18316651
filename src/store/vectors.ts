import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { SteerdError } from '../errors.js';

/** The model a vector was made for: used vectors must match the serving model. */
export interface VectorModel {
  id: string;
  n_embd: number;
}

export interface VectorMeta {
  name: string;
  /** `direction` ([H]) or `sequence` ([k, H]). */
  kind: 'direction' | 'sequence';
  shape: number[];
  /** Suggested hook point (the recipe's layer, or given on upload). */
  layer: number | null;
  /** L2 norm of all values. */
  norm: number;
  /** sha256 of the shape and the float32 values: the vector's identity. */
  hash: string;
  /** How it was made: the recipe, or `"uploaded"`. */
  recipe: unknown;
  model: VectorModel;
  description: string | null;
  created_at: string;
}

export interface StoredVector extends VectorMeta {
  values: Float32Array;
}

export class NotFoundError extends SteerdError {
  constructor(name: string) {
    super(`no vector named "${name}"`, 404, 'not_found', { name });
  }
}

export class ConflictError extends SteerdError {
  constructor(name: string) {
    super(`a vector named "${name}" exists (PUT /v1/vectors/${name} replaces it)`, 409, 'conflict', { name });
  }
}

export class LimitError extends SteerdError {
  constructor(max: number) {
    super(`the store holds its maximum of ${max} vectors; delete one first`, 422, 'limit', { max });
  }
}

/** Content hash of a vector: shape and little-endian float32 bytes. */
export function vectorHash(shape: number[], values: Float32Array): string {
  return createHash('sha256')
    .update(shape.join('x'))
    .update(Buffer.from(values.buffer, values.byteOffset, values.byteLength))
    .digest('hex');
}

export function describe(values: Float32Array, shape: number[]): Pick<VectorMeta, 'kind' | 'norm' | 'hash' | 'shape'> {
  let s = 0;
  for (const v of values) s += v * v;
  return {
    kind: shape.length === 1 ? 'direction' : 'sequence',
    shape,
    norm: Math.sqrt(s),
    hash: vectorHash(shape, values),
  };
}

/** Where vectors live; the file store and the Redis registry implement it. */
export interface VectorStore {
  list(): Promise<VectorMeta[]>;
  get(name: string): Promise<StoredVector>;
  /** Stores a vector; refuses an existing name unless `replace`. */
  put(v: StoredVector, opts: { replace: boolean; max: number }): Promise<void>;
  delete(name: string): Promise<void>;
  /** Whether the store answers (readiness); absent = always. */
  ping?(): Promise<boolean>;
  close?(): Promise<void>;
}

interface FileRecord extends VectorMeta {
  /** base64 of the little-endian float32 values */
  values_f32: string;
}

/**
 * Vectors as one JSON file each in `<dataDir>/vectors`, written atomically (temp file, fsync,
 * rename): a crash leaves either the old file or the new one, never a torn one.
 */
export class FileVectorStore implements VectorStore {
  private readonly dir: string;
  private lock: Promise<unknown> = Promise.resolve();

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'vectors');
    mkdirSync(this.dir, { recursive: true });
  }

  private file(name: string) {
    return join(this.dir, `${name}.json`);
  }

  /** Serialises writers so that count limits and name checks hold under concurrency. */
  private exclusive<T>(f: () => T | Promise<T>): Promise<T> {
    const run = this.lock.then(f, f);
    this.lock = run.catch(() => undefined);
    return run;
  }

  async list(): Promise<VectorMeta[]> {
    const out: VectorMeta[] = [];
    for (const f of readdirSync(this.dir).sort()) {
      if (!f.endsWith('.json')) continue;
      const { values_f32: _, ...meta } = JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as FileRecord;
      out.push(meta);
    }
    return out;
  }

  async get(name: string): Promise<StoredVector> {
    let rec: FileRecord;
    try {
      rec = JSON.parse(readFileSync(this.file(name), 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(name);
      throw e;
    }
    const { values_f32, ...meta } = rec;
    const b = Buffer.from(values_f32, 'base64');
    return { ...meta, values: new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)) };
  }

  put(v: StoredVector, opts: { replace: boolean; max: number }): Promise<void> {
    return this.exclusive(() => {
      const names = new Set(
        readdirSync(this.dir)
          .filter((f) => f.endsWith('.json'))
          .map((f) => f.slice(0, -5)),
      );
      if (names.has(v.name) && !opts.replace) throw new ConflictError(v.name);
      if (!names.has(v.name) && names.size >= opts.max) {
        throw new LimitError(opts.max);
      }
      const { values, ...meta } = v;
      const rec: FileRecord = {
        ...meta,
        values_f32: Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString('base64'),
      };
      const tmp = join(this.dir, `.${v.name}.${randomBytes(4).toString('hex')}.tmp`);
      const fd = openSync(tmp, 'w');
      try {
        writeSync(fd, JSON.stringify(rec));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file(v.name));
    });
  }

  delete(name: string): Promise<void> {
    return this.exclusive(() => {
      try {
        rmSync(this.file(name));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(name);
        throw e;
      }
    });
  }
}
