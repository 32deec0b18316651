import { UnrecoverableError } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Intervention } from '../engine/types.js';
import { vectorHash } from '../store/content.js';
import { valuesKey } from '../store/redis-vectors.js';
import type { WireFailure, WireIntervention } from './jobs.js';

/**
 * A worker's copy of the steering vectors its jobs name by hash, fetched from the registry on first
 * use. Content-addressed, so never stale; checked against its hash when fetched; least recently
 * used first out beyond `maxBytes`.
 */
export class VectorCache {
  private readonly entries = new Map<string, Float32Array>();
  private readonly fetching = new Map<string, Promise<Float32Array>>();
  private bytes = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    /** Hidden size of the loaded model: the shape that the hash covers. */
    private readonly nEmbd: number,
    /** Bytes of values kept. Default 64 MiB (about 10,000 GPT-2 XL directions). */
    private readonly maxBytes = 64 * 2 ** 20,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  private fetch(hash: string, rows: number): Promise<Float32Array> {
    const hit = this.entries.get(hash);
    if (hit) {
      this.entries.delete(hash); // re-inserted: most recently used last
      this.entries.set(hash, hit);
      return Promise.resolve(hit);
    }
    // jobs arriving together with a new vector share one fetch
    let pending = this.fetching.get(hash);
    if (!pending) {
      pending = this.load(hash, rows).finally(() => this.fetching.delete(hash));
      this.fetching.set(hash, pending);
    }
    return pending;
  }

  private async load(hash: string, rows: number): Promise<Float32Array> {
    const bytes = await this.redis.getBuffer(valuesKey(this.prefix, hash));
    const gone = (why: string): never => {
      const f: WireFailure = {
        status: 410,
        code: 'vector_gone',
        message: `steering vector ${hash.slice(0, 12)}…: ${why}`,
      };
      throw new UnrecoverableError(JSON.stringify(f));
    };
    if (!bytes)
      return gone(
        'its values are no longer in the registry (deleted or replaced over a week ago, or sent inline and not named by a receipt for a week); send the request again',
      );
    const values = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    const shape = rows === 1 ? [this.nEmbd] : [rows, this.nEmbd];
    if (vectorHash(shape, values) !== hash) return gone('the values in the registry do not match their hash');
    this.entries.set(hash, values);
    this.bytes += values.byteLength;
    for (const [h, v] of this.entries) {
      if (this.bytes <= this.maxBytes || h === hash) break;
      this.entries.delete(h);
      this.bytes -= v.byteLength;
    }
    return values;
  }

  /** The engine's interventions for a job's. */
  resolve(list: WireIntervention[]): Promise<Intervention[]> {
    return Promise.all(
      list.map(async ({ hash, ...rest }) => ({ ...rest, hash, values: await this.fetch(hash, rest.rows) })),
    );
  }
}
