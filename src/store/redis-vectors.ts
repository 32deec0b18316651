import { Redis } from 'ioredis';
import { SteerdError } from '../errors.js';
import {
  ConflictError,
  LimitError,
  NotFoundError,
  type StoredVector,
  type VectorMeta,
  type VectorStore,
} from './vectors.js';

/**
 * Values no name refers to any more are not deleted at once: a queued job may still refer to them
 * by hash. They expire after `ORPHAN_TTL_S` instead (a later put of the same values keeps them).
 * The scripts' last two arguments are the values key prefix and that TTL; building a key inside a
 * script assumes a single Redis instance (not a cluster).
 */
const RELEASE = `
local hash = cjson.decode(old).hash
local shared = false
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if cjson.decode(v).hash == hash then shared = true break end
end
if not shared then redis.call('EXPIRE', ARGV[#ARGV - 1] .. hash, ARGV[#ARGV]) end`;

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
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then ${RELEASE} end
return 'ok'`;

/** Seconds that values nothing refers to (replaced, deleted, or sent inline with a job) are kept. */
export const ORPHAN_TTL_S = 24 * 3600;

/** Where the float32 values of the vector with content hash `hash` live. */
export const valuesKey = (prefix: string, hash: string) => `${prefix}vectors:values:${hash}`;

/**
 * The vector registry in Redis, shared by every process on the same Redis: metadata in one hash
 * (name → JSON, the name → hash link included), values as binary float32 under their content
 * hash (so a job can carry the hash and any worker fetch the values). Writes are one Lua script:
 * the name check, the count limit and both writes happen atomically.
 */
export class RedisVectorStore implements VectorStore {
  readonly redis: Redis;

  constructor(
    url: string,
    /** Key prefix, so that several deployments (or tests) share one Redis. Default `steerd:`. */
    private readonly prefix = 'steerd:',
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

  /** The arguments the scripts need to find and expire orphaned values. */
  private get releaseArgs() {
    return [valuesKey(this.prefix, ''), String(ORPHAN_TTL_S)];
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
        2,
        this.metaKey,
        this.valuesKey(v.hash),
        v.name,
        JSON.stringify(meta),
        Buffer.from(values.buffer, values.byteOffset, values.byteLength),
        opts.replace ? '1' : '0',
        String(opts.max),
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

  async close(): Promise<void> {
    this.redis.disconnect();
  }
}
