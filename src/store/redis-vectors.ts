import { Redis } from 'ioredis';
import { SteerdError } from '../errors.js';
import { checkValues, isVectorHash, readPreset, vectorHash } from './content.js';
import {
  encodePreset,
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

/**
 * Values no name refers to any more are not deleted at once: a queued job may still refer to them
 * by hash, and a receipt may name them. They expire after `ORPHAN_TTL_S` instead (a later put of
 * the same values keeps them), their shape key with them. The scripts' last three arguments are
 * the values key prefix, the shape key prefix and that TTL; building a key inside a script assumes
 * a single Redis instance (not a cluster).
 */
const RELEASE = `
local hash = cjson.decode(old).hash
local shared = false
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if cjson.decode(v).hash == hash then shared = true break end
end
if not shared then
  redis.call('EXPIRE', ARGV[#ARGV - 2] .. hash, ARGV[#ARGV])
  redis.call('EXPIRE', ARGV[#ARGV - 1] .. hash, ARGV[#ARGV])
end`;

const DELETE = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
${RELEASE}
return 1`;

const PUT = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and ARGV[4] == '0' then return 'conflict' end
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return 'limit' end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[6])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then ${RELEASE} end
return 'ok'`;

/**
 * putValues: the values (rewritten: same bytes, or a repair), their expiry raised to at least
 * ARGV[3] seconds (EXPIRE GT leaves a key without expiry, a registered vector's, without one), and
 * the shape key set with exactly the values key's expiry. With a quota (ARGV[4] bytes, -1: none)
 * the values kept are counted: KEYS[3] orders their hashes by last put (ARGV[6], ms), KEYS[4] holds
 * each one's bytes and KEYS[5] their total; beyond the quota the least recently put go first (a
 * registered vector's, without expiry, only leave the count). ARGV[5] is the hash, ARGV[7] and
 * ARGV[8] the values and shape key prefixes.
 */
const PUT_VALUES = `
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
if existed == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3], 'GT') else redis.call('EXPIRE', KEYS[1], ARGV[3]) end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local max = tonumber(ARGV[4])
if max < 0 then return 1 end
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
local total
if redis.call('HSETNX', KEYS[4], ARGV[5], #ARGV[1]) == 1 then
  total = redis.call('INCRBY', KEYS[5], #ARGV[1])
else
  total = tonumber(redis.call('GET', KEYS[5]) or '0')
end
while total > max do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not oldest then break end
  local bytes = tonumber(redis.call('HGET', KEYS[4], oldest) or '0')
  redis.call('ZREM', KEYS[3], oldest)
  redis.call('HDEL', KEYS[4], oldest)
  total = redis.call('DECRBY', KEYS[5], bytes)
  if redis.call('PTTL', ARGV[7] .. oldest) ~= -1 then redis.call('DEL', ARGV[7] .. oldest, ARGV[8] .. oldest) end
end
return 1`;

/** A preset written under its name: refused when it exists and may not be replaced, or the count is full. */
const PUT_PRESET = `
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1])
if exists == 1 and ARGV[3] == '0' then return 'conflict' end
if exists == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 'limit' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'`;

/**
 * Seconds that values nothing refers to any more (a deleted or replaced vector's) are kept:
 * VALUES_TTL_S (it was one day), so that receipts naming them stay replayable for a week. Inline
 * values a job carries are kept `INLINE_TTL_S` (remote-engine.ts), longer once putValues keeps them
 * for a receipt.
 */
export const ORPHAN_TTL_S = VALUES_TTL_S;

/** Where the float32 values of the vector with content hash `hash` live. */
export const valuesKey = (prefix: string, hash: string) => `${prefix}vectors:values:${hash}`;

/**
 * Where the shape of the values under `valuesKey(prefix, hash)` lives (JSON, e.g. `[768]` or
 * `[4,768]`), with the same expiry as the values (none for a registered vector's). A key of its
 * own, so that the values key stays plain float32 for the workers that read it.
 */
export const shapeKey = (prefix: string, hash: string) => `${prefix}vectors:shape:${hash}`;

/**
 * The shape that gives `values` the content hash `hash`, for values stored without a shape key
 * (registered or sent inline before shapes were kept): [n], else [k, n/k] for the divisors k of n,
 * fewest rows first. The hash covers the shape, so at most one matches. Null if none does.
 */
export function shapeForHash(hash: string, values: Float32Array): number[] | null {
  const n = values.length;
  if (n === 0) return null;
  if (vectorHash([n], values) === hash) return [n];
  const small: number[] = [];
  const large: number[] = [];
  for (let k = 1; k * k <= n; k++) {
    if (n % k) continue;
    small.push(k);
    if (k * k !== n) large.unshift(n / k);
  }
  for (const k of [...small, ...large]) if (vectorHash([k, n / k], values) === hash) return [k, n / k];
  return null;
}

/**
 * The vector registry in Redis, shared by every process on the same Redis: metadata in one hash
 * (name → JSON, the name → hash link included), values as binary float32 under their content
 * hash (so a job can carry the hash and any worker fetch the values), their shape beside them
 * (`shapeKey`). Writes are one Lua script: the name check, the count limit and the writes happen
 * atomically. A registered vector's values and shape keys have no expiry; other values (put for
 * receipts, released by a delete or replace, sent inline with a job) expire.
 */
export class RedisVectorStore implements VectorStore {
  readonly redis: Redis;

  constructor(
    url: string,
    /** Key prefix, so that several deployments (or tests) share one Redis. Default `steerd:`. */
    private readonly prefix = 'steerd:',
    /**
     * Bytes of values kept by putValues at most (STEERD_INLINE_VALUES_MAX_BYTES): beyond, the least
     * recently put go first. Unbounded when not given.
     */
    private readonly maxKeptBytes = Number.POSITIVE_INFINITY,
  ) {
    // Fail fast while Redis is away (503), reconnect by itself when it returns.
    this.redis = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: false });
    this.redis.on('error', () => undefined); // reported through the commands that fail
  }

  private get metaKey() {
    return `${this.prefix}vectors:meta`;
  }

  private valuesKey(hash: string) {
    return valuesKey(this.prefix, hash);
  }

  private shapeKey(hash: string) {
    return shapeKey(this.prefix, hash);
  }

  /** The arguments the scripts need to find and expire orphaned values. */
  private get releaseArgs() {
    return [valuesKey(this.prefix, ''), shapeKey(this.prefix, ''), String(ORPHAN_TTL_S)];
  }

  /** Waits up to a second for the connection (at start, or while it comes back), else fails. */
  private connected(): Promise<void> {
    if (this.redis.status === 'ready') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.redis.off('ready', onReady);
        reject(new Error(`not connected (${this.redis.status})`));
      }, 1000);
      this.redis.once('ready', onReady);
    });
  }

  private async call<T>(f: () => Promise<T>): Promise<T> {
    try {
      await this.connected();
      return await f();
    } catch (e) {
      if (e instanceof SteerdError) throw e;
      throw new SteerdError(`the vector registry (Redis) is unavailable: ${(e as Error).message}`, 503, 'unavailable');
    }
  }

  /** Whether Redis answers (readiness). */
  async ping(): Promise<boolean> {
    try {
      await this.connected();
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  list(): Promise<VectorMeta[]> {
    return this.call(async () => {
      const all = await this.redis.hgetall(this.metaKey);
      return Object.keys(all)
        .sort()
        .map((n) => JSON.parse(all[n]) as VectorMeta);
    });
  }

  get(name: string): Promise<StoredVector> {
    return this.call(async () => {
      const raw = await this.redis.hget(this.metaKey, name);
      if (raw === null) throw new NotFoundError(name);
      const meta = JSON.parse(raw) as VectorMeta;
      const bytes = await this.redis.getBuffer(this.valuesKey(meta.hash));
      if (!bytes) throw new SteerdError(`vector "${name}" has lost its values`, 500, 'internal');
      return {
        ...meta,
        values: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)),
      };
    });
  }

  put(v: StoredVector, opts: { replace: boolean; max: number }): Promise<void> {
    return this.call(async () => {
      const { values, ...meta } = v;
      const r = await this.redis.eval(
        PUT,
        3,
        this.metaKey,
        this.valuesKey(v.hash),
        this.shapeKey(v.hash),
        v.name,
        JSON.stringify(meta),
        Buffer.from(values.buffer, values.byteOffset, values.byteLength),
        opts.replace ? '1' : '0',
        String(opts.max),
        JSON.stringify(v.shape),
        ...this.releaseArgs,
      );
      if (r === 'conflict') throw new ConflictError(v.name);
      if (r === 'limit') throw new LimitError(opts.max);
    });
  }

  delete(name: string): Promise<void> {
    return this.call(async () => {
      if ((await this.redis.eval(DELETE, 1, this.metaKey, name, ...this.releaseArgs)) === 0)
        throw new NotFoundError(name);
    });
  }

  putValues(hash: string, shape: number[], values: Float32Array): Promise<void> {
    try {
      checkValues(hash, shape, values);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.call(async () => {
      const kept = `${this.prefix}vectors:kept`;
      await this.redis.eval(
        PUT_VALUES,
        5,
        this.valuesKey(hash),
        this.shapeKey(hash),
        `${kept}:order`,
        `${kept}:bytes`,
        `${kept}:total`,
        Buffer.from(values.buffer, values.byteOffset, values.byteLength),
        JSON.stringify(shape),
        String(VALUES_TTL_S),
        String(Number.isFinite(this.maxKeptBytes) ? this.maxKeptBytes : -1),
        hash,
        String(Date.now()),
        valuesKey(this.prefix, ''),
        shapeKey(this.prefix, ''),
      );
    });
  }

  getValues(hash: string): Promise<{ shape: number[]; values: Float32Array } | null> {
    if (!isVectorHash(hash)) return Promise.resolve(null);
    return this.call(async () => {
      const res = await this.redis.multi().getBuffer(this.valuesKey(hash)).get(this.shapeKey(hash)).exec();
      if (!res) throw new Error('the transaction was aborted');
      for (const [err] of res) if (err) throw err;
      const bytes = res[0][1] as Buffer | null;
      if (!bytes || bytes.length % 4) return null;
      const values = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
      let shape: number[] | null = null;
      try {
        shape = JSON.parse(res[1][1] as string) as number[];
      } catch {
        // no shape key (stored before shapes were): found from the hash below
      }
      if (Array.isArray(shape) && shape.every(Number.isInteger) && vectorHash(shape, values) === hash)
        return { shape, values };
      const found = shapeForHash(hash, values);
      return found && { shape: found, values };
    });
  }

  /** Presets: one hash per model, name → the preset with its pinned values (presets.ts). */
  private presetsKey(modelId: string) {
    return `${this.prefix}presets:${presetScope(modelId)}`;
  }

  listPresets(modelId: string): Promise<StoredPreset[]> {
    return this.call(async () => {
      const all = await this.redis.hgetall(this.presetsKey(modelId));
      return Object.keys(all)
        .sort()
        .map((n) => readPreset(all[n]));
    });
  }

  getPreset(modelId: string, name: string): Promise<StoredPreset> {
    return this.call(async () => {
      const raw = await this.redis.hget(this.presetsKey(modelId), name);
      if (raw === null) throw new PresetNotFoundError(name);
      return readPreset(raw);
    });
  }

  putPreset(p: StoredPreset, opts: { replace: boolean; max: number }): Promise<void> {
    return this.call(async () => {
      const r = await this.redis.eval(
        PUT_PRESET,
        1,
        this.presetsKey(p.model.id),
        p.name,
        encodePreset(p),
        opts.replace ? '1' : '0',
        String(opts.max),
      );
      if (r === 'conflict') throw new PresetConflictError(p.name);
      if (r === 'limit') throw new PresetLimitError(opts.max);
    });
  }

  deletePreset(modelId: string, name: string): Promise<void> {
    return this.call(async () => {
      if ((await this.redis.hdel(this.presetsKey(modelId), name)) === 0) throw new PresetNotFoundError(name);
    });
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }
}
