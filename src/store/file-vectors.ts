import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { NAME_PATTERN } from '../config.js';
import { BadRequestError } from '../errors.js';
import { checkValues, isVectorHash, readPreset, vectorHash } from './content.js';
import {
  encodePreset,
  isPresetName,
  PresetConflictError,
  PresetLimitError,
  PresetNotFoundError,
  presetScope,
  type StoredPreset,
} from './presets.js';
import {
  ConflictError,
  LimitError,
  NotFoundError,
  type StoredVector,
  VALUES_TTL_S,
  type VectorMeta,
  type VectorStore,
} from './types.js';

interface FileRecord extends VectorMeta {
  /** base64 of the little-endian float32 values */
  values_f32: string;
}

const f32Bytes = (values: Float32Array) => Buffer.from(values.buffer, values.byteOffset, values.byteLength);
const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/**
 * `<dir>/values/<hash>.bin`: the 4 bytes `SVV1`, the rank r (uint32 LE), r dimensions (uint32 LE),
 * then the float32 values. The shape travels in the same file as the values, so one rename makes
 * both visible together.
 */
const VALUES_MAGIC = 'SVV1';

function encodeValues(shape: number[], values: Float32Array): Buffer {
  const head = Buffer.alloc(8 + 4 * shape.length);
  head.write(VALUES_MAGIC, 0, 'latin1');
  head.writeUInt32LE(shape.length, 4);
  for (const [i, d] of shape.entries()) head.writeUInt32LE(d, 8 + 4 * i);
  return Buffer.concat([head, f32Bytes(values)]);
}

/** The shape and values of a values file, or null when it is not one (torn, truncated, foreign). */
function decodeValues(b: Buffer): { shape: number[]; values: Float32Array } | null {
  if (b.length < 8 || b.toString('latin1', 0, 4) !== VALUES_MAGIC) return null;
  const rank = b.readUInt32LE(4);
  if (rank < 1 || rank > 8 || b.length < 8 + 4 * rank) return null;
  const shape = Array.from({ length: rank }, (_, i) => b.readUInt32LE(8 + 4 * i));
  const start = 8 + 4 * rank;
  if (b.length - start !== 4 * shape.reduce((a, d) => a * d, 1)) return null;
  return { shape, values: f32(b.subarray(start)) };
}

/**
 * Writes `data` to `file` atomically: a temp file beside it (named `.<tag>.<random>.tmp`), fsync,
 * rename. A crash leaves the old file or the new one, never a torn one (at worst a stray temp
 * file; the values directory's are pruned).
 */
function writeAtomic(file: string, tag: string, data: Buffer): void {
  const tmp = join(dirname(file), `.${tag}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx');
  try {
    try {
      for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Temp files older than this (ms) in the values directory are a crashed write's: pruned. */
const STRAY_TMP_MS = 3600_000;

/**
 * Vectors as one JSON file each in `<dataDir>/vectors`, written atomically (temp file, fsync,
 * rename): a crash leaves either the old file or the new one, never a torn one.
 *
 * Values by content hash (for receipts) are found in two places: the registered vectors' own JSON
 * files (their hash is in the record; a lookup reads each record, at most STEERD_MAX_VECTORS of
 * them, and parses only the one naming the hash: no index to keep in step with the files, so it
 * also finds vectors written before values were kept by hash, and replay is rare), and
 * `<dataDir>/values/<hash>.bin` (what putValues keeps, and a deleted or replaced vector's values),
 * written atomically too. A values file lives VALUES_TTL_S after its last putValues (its mtime);
 * expired ones are pruned on putValues, at most once a minute, except those whose hash a name
 * refers to.
 */
export class FileVectorStore implements VectorStore {
  private readonly dir: string;
  private readonly valuesDir: string;
  /** `<dataDir>/presets/<presetScope(model id)>/<name>.json`, written atomically like the vectors. */
  private readonly presetsDir: string;
  private lock: Promise<unknown> = Promise.resolve();
  /** When values were last pruned (ms since the epoch); 0: not yet. */
  private lastPrune = 0;
  /** The values directory's bytes as last counted, plus those written since; undefined: not counted yet. */
  private keptBytes: number | undefined;

  constructor(
    dataDir: string,
    /**
     * Bytes of values files kept at most (STEERD_INLINE_VALUES_MAX_BYTES): beyond, the oldest
     * (least recently put) go first, except those a name refers to. Unbounded when not given.
     */
    private readonly maxKeptBytes = Number.POSITIVE_INFINITY,
  ) {
    this.dir = join(dataDir, 'vectors');
    this.valuesDir = join(dataDir, 'values');
    this.presetsDir = join(dataDir, 'presets');
    mkdirSync(this.dir, { recursive: true });
    mkdirSync(this.presetsDir, { recursive: true });
    mkdirSync(this.valuesDir, { recursive: true });
  }

  private file(name: string) {
    return join(this.dir, `${name}.json`);
  }

  /** Where values with this (validated) hash are kept. */
  private valuesFile(hash: string) {
    return join(this.valuesDir, `${hash}.bin`);
  }

  /** Serialises writers so that count limits and name checks hold under concurrency. */
  private exclusive<T>(f: () => T | Promise<T>): Promise<T> {
    const run = this.lock.then(f, f);
    this.lock = run.catch(() => undefined);
    return run;
  }

  /** The registered vectors' record files. */
  private recordFiles(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.json'))
      .sort();
  }

  async list(): Promise<VectorMeta[]> {
    const out: VectorMeta[] = [];
    for (const f of this.recordFiles()) {
      const { values_f32: _, ...meta } = JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as FileRecord;
      out.push(meta);
    }
    return out;
  }

  private read(name: string): StoredVector {
    let rec: FileRecord;
    try {
      rec = JSON.parse(readFileSync(this.file(name), 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(name);
      throw e;
    }
    const { values_f32, ...meta } = rec;
    return { ...meta, values: f32(Buffer.from(values_f32, 'base64')) };
  }

  async get(name: string): Promise<StoredVector> {
    return this.read(name);
  }

  put(v: StoredVector, opts: { replace: boolean; max: number }): Promise<void> {
    return this.exclusive(() => {
      const names = new Set(this.recordFiles().map((f) => f.slice(0, -5)));
      if (names.has(v.name) && !opts.replace) throw new ConflictError(v.name);
      if (!names.has(v.name) && names.size >= opts.max) {
        throw new LimitError(opts.max);
      }
      if (names.has(v.name)) this.retire(v.name, v.hash);
      const { values, ...meta } = v;
      const rec: FileRecord = { ...meta, values_f32: f32Bytes(values).toString('base64') };
      writeAtomic(this.file(v.name), v.name, Buffer.from(JSON.stringify(rec)));
    });
  }

  delete(name: string): Promise<void> {
    return this.exclusive(() => {
      this.retire(name);
      try {
        rmSync(this.file(name));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(name);
        throw e;
      }
    });
  }

  /**
   * Keeps the values of the vector `name` (about to be deleted, or replaced by values of hash
   * `next`) in the values directory, so that receipts naming them stay replayable VALUES_TTL_S.
   * Done before the record goes: a crash in between loses nothing. A record that cannot be read
   * has no values to keep.
   */
  private retire(name: string, next?: string): void {
    let old: StoredVector;
    try {
      old = this.read(name);
    } catch {
      return;
    }
    if (old.hash !== next && isVectorHash(old.hash) && vectorHash(old.shape, old.values) === old.hash)
      this.keep(old.hash, old.shape, old.values);
  }

  /** Values kept in the values directory with this (validated) hash, if intact. */
  private readKept(hash: string): { shape: number[]; values: Float32Array } | null {
    let b: Buffer;
    try {
      b = readFileSync(this.valuesFile(hash));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    const got = decodeValues(b);
    return got && vectorHash(got.shape, got.values) === hash ? got : null;
  }

  /**
   * Writes the values file, or refreshes its mtime (the start of its VALUES_TTL_S, and its place
   * in the quota's order) when intact; then holds the directory to its quota.
   */
  private keep(hash: string, shape: number[], values: Float32Array): void {
    if (this.readKept(hash)) {
      const now = new Date();
      utimesSync(this.valuesFile(hash), now, now);
      return;
    }
    const bytes = encodeValues(shape, values);
    writeAtomic(this.valuesFile(hash), hash, bytes);
    if (this.maxKeptBytes === Number.POSITIVE_INFINITY) return;
    this.keptBytes = this.keptBytes === undefined ? this.evict() : this.keptBytes + bytes.length;
    if (this.keptBytes > this.maxKeptBytes) this.keptBytes = this.evict();
  }

  /** The hashes a name refers to: their values are the vectors', never pruned or evicted. */
  private namedHashes(): Set<string> {
    const named = new Set<string>();
    for (const f of this.recordFiles()) {
      try {
        named.add((JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as FileRecord).hash);
      } catch {
        // deleted meanwhile, or unreadable: nothing to protect
      }
    }
    return named;
  }

  /**
   * Removes the least recently put values files until the rest fit the quota (those a name refers
   * to neither count nor go); returns the bytes left.
   */
  private evict(): number {
    const named = this.namedHashes();
    const files: { path: string; size: number; mtime: number }[] = [];
    for (const f of readdirSync(this.valuesDir)) {
      if (!f.endsWith('.bin') || !isVectorHash(f.slice(0, -4)) || named.has(f.slice(0, -4))) continue;
      const path = join(this.valuesDir, f);
      try {
        const st = statSync(path);
        files.push({ path, size: st.size, mtime: st.mtimeMs });
      } catch {
        // removed meanwhile
      }
    }
    let total = files.reduce((a, f) => a + f.size, 0);
    files.sort((a, b) => a.mtime - b.mtime);
    for (const f of files) {
      if (total <= this.maxKeptBytes) break;
      rmSync(f.path, { force: true });
      total -= f.size;
    }
    return total;
  }

  /** A registered vector's values with this hash, from the records (see the class comment). */
  private findRegistered(hash: string): { shape: number[]; values: Float32Array } | null {
    for (const f of this.recordFiles()) {
      let text: string;
      try {
        text = readFileSync(join(this.dir, f), 'utf8');
      } catch {
        continue; // deleted meanwhile
      }
      if (!text.includes(hash)) continue;
      let rec: FileRecord;
      try {
        rec = JSON.parse(text);
      } catch {
        continue; // an unreadable record names nothing
      }
      if (rec.hash !== hash) continue;
      const values = f32(Buffer.from(rec.values_f32, 'base64'));
      if (vectorHash(rec.shape, values) === hash) return { shape: rec.shape, values };
    }
    return null;
  }

  putValues(hash: string, shape: number[], values: Float32Array): Promise<void> {
    try {
      checkValues(hash, shape, values);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.exclusive(() => {
      this.keep(hash, [...shape], values);
      if (Date.now() - this.lastPrune >= 60_000) {
        try {
          this.prune(Date.now());
        } catch {
          // opportunistic: the next chance will do
        }
      }
    });
  }

  async getValues(hash: string): Promise<{ shape: number[]; values: Float32Array } | null> {
    if (!isVectorHash(hash)) return null;
    // Kept values, else a record, else kept values again: a delete or replace keeps the values
    // before removing the record, so one of the three sees them without taking the lock.
    return this.readKept(hash) ?? this.findRegistered(hash) ?? this.readKept(hash);
  }

  /** A model's presets folder. */
  private presetDir(modelId: string) {
    return join(this.presetsDir, presetScope(modelId));
  }

  /** A preset's file; a name that cannot be a preset's names none (it would reach outside the folder). */
  private presetFile(modelId: string, name: string) {
    if (!isPresetName(name)) throw new PresetNotFoundError(name);
    return join(this.presetDir(modelId), `${name}.json`);
  }

  private presetNames(modelId: string): string[] {
    let files: string[];
    try {
      files = readdirSync(this.presetDir(modelId));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []; // none made yet
      throw e;
    }
    return files
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .sort();
  }

  async listPresets(modelId: string): Promise<StoredPreset[]> {
    const out: StoredPreset[] = [];
    for (const name of this.presetNames(modelId)) {
      try {
        out.push(await this.getPreset(modelId, name));
      } catch (e) {
        if (!(e instanceof PresetNotFoundError)) throw e; // deleted meanwhile
      }
    }
    return out;
  }

  async getPreset(modelId: string, name: string): Promise<StoredPreset> {
    let text: string;
    try {
      text = readFileSync(this.presetFile(modelId, name), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new PresetNotFoundError(name);
      throw e;
    }
    return readPreset(text);
  }

  putPreset(p: StoredPreset, opts: { replace: boolean; max: number }): Promise<void> {
    if (!isPresetName(p.name))
      return Promise.reject(
        new BadRequestError(`"${p.name}" cannot name a preset (${NAME_PATTERN})`, { preset: p.name }),
      );
    return this.exclusive(() => {
      const names = new Set(this.presetNames(p.model.id));
      if (names.has(p.name) && !opts.replace) throw new PresetConflictError(p.name);
      if (!names.has(p.name) && names.size >= opts.max) throw new PresetLimitError(opts.max);
      mkdirSync(this.presetDir(p.model.id), { recursive: true });
      writeAtomic(this.presetFile(p.model.id, p.name), p.name, Buffer.from(encodePreset(p)));
    });
  }

  deletePreset(modelId: string, name: string): Promise<void> {
    return this.exclusive(() => {
      try {
        rmSync(this.presetFile(modelId, name));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new PresetNotFoundError(name);
        throw e;
      }
    });
  }

  /**
   * Deletes values files whose last putValues (mtime) is more than VALUES_TTL_S before `now`,
   * unless a name refers to their hash, and temp files left by a crashed write. Runs by itself on
   * putValues at most once a minute; returns how many files it removed.
   */
  pruneValues(now = Date.now()): Promise<number> {
    return this.exclusive(() => this.prune(now));
  }

  private prune(now: number): number {
    this.lastPrune = now;
    const named = this.namedHashes();
    this.keptBytes = undefined; // counted again at the next write
    let removed = 0;
    for (const f of readdirSync(this.valuesDir)) {
      const isTmp = f.endsWith('.tmp');
      if (!isTmp && !(f.endsWith('.bin') && isVectorHash(f.slice(0, -4)))) continue;
      if (!isTmp && named.has(f.slice(0, -4))) continue;
      const path = join(this.valuesDir, f);
      let age: number;
      try {
        age = now - statSync(path).mtimeMs;
      } catch {
        continue;
      }
      if (age > (isTmp ? STRAY_TMP_MS : VALUES_TTL_S * 1000)) {
        rmSync(path, { force: true });
        removed++;
      }
    }
    return removed;
  }
}
