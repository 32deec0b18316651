import type { Redis } from 'ioredis';
import type { KvReport } from '../engine/kv/manager.js';
import type {
  ActivationsRequest,
  ActivationsResult,
  GenerateEvent,
  GenerateRequest,
  Intervention,
} from '../engine/types.js';
import { SteerdError } from '../errors.js';

/**
 * What crosses Redis between API processes and `steerd worker` processes (BullMQ jobs). Requests
 * are validated before they are enqueued; vectors travel by content hash (their values are in the
 * registry, `vectors:values:<hash>`), activations come back as little-endian float32 in base64.
 */

/**
 * One queue per model (checkpoint fingerprint): a worker only ever takes jobs made for the model it
 * has loaded, and several models can share one Redis.
 */
export const queueName = (fingerprint: string) => `steerd-${fingerprint.slice(0, 16)}`;
/** Pub/sub channel on which API processes ask workers to cancel an active job. */
export const cancelChannel = (prefix: string) => `${prefix}cancel`;
/**
 * Set (for an hour) when an API process cancels a job: a worker that takes the job afterwards
 * (it was between the waiting list and its processor, or is taking a stalled job over) sees it.
 */
export const cancelKey = (prefix: string, id: string) => `${prefix}cancelled:${id}`;
/** BullMQ's own key prefix, inside ours. */
export const bullPrefix = (prefix: string) => `${prefix}q`;

/** An intervention by the content hash of its values (the `hash` of `Intervention`, required). */
export interface WireIntervention extends Omit<Intervention, 'values' | 'hash'> {
  hash: string;
}

export type JobData =
  | { kind: 'generate'; req: Omit<GenerateRequest, 'interventions'> & { interventions: WireIntervention[] } }
  | {
      kind: 'activations';
      req: Omit<ActivationsRequest, 'interventions' | 'lens'> & {
        interventions: WireIntervention[];
        lens_b64?: string;
      };
    };

/** One token event, numbered so that a retried job's repeated tokens can be recognised. */
export interface Progress {
  i: number;
  e: GenerateEvent;
}

/**
 * A job's numbered token events, in order, for its request. A retried job repeats the tokens
 * already streamed (same seed, same tokens): they are skipped once checked to be the same. A repeat
 * that differs (a retry on a worker that samples differently) or a gap (events lost) ends the
 * request rather than splice two sequences.
 */
export class TokenSequence {
  private readonly ids: number[] = [];

  /** Tokens generated so far (a final text-only event, id −1, is not one). */
  get generated(): number {
    return this.ids.filter((id) => id >= 0).length;
  }

  /** The event to stream, or undefined for a repeat; throws on a divergence or a gap. */
  accept(p: Progress): GenerateEvent | undefined {
    const id = p.e.type === 'token' ? p.e.id : -1;
    if (p.i < this.ids.length) {
      if (id === this.ids[p.i]) return undefined;
      throw new SteerdError(
        `the job was retried on a worker whose token ${p.i} differs (${id}, not ${this.ids[p.i]}); send the request again`,
        502,
        'worker_diverged',
      );
    }
    if (p.i > this.ids.length)
      throw new SteerdError(
        `token events ${this.ids.length}..${p.i - 1} of the job were lost; send the request again`,
        502,
        'events_lost',
      );
    this.ids.push(id);
    return p.e;
  }
}

export interface WireActivations extends Omit<ActivationsResult, 'activations' | 'lens'> {
  activations_b64: Record<number, string>;
  lens_b64?: string;
}

/** A refused request: not retried, carried back with its HTTP status. */
export interface WireFailure {
  status: number;
  code: string;
  message: string;
}

export const b64 = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
export const f32 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

export const toWire = (list: Intervention[], hashOf: (iv: Intervention) => string): WireIntervention[] =>
  list.map(({ values: _, ...rest }, i) => ({ ...rest, hash: hashOf(list[i]) }));

export const activationsToWire = (r: ActivationsResult): WireActivations => ({
  tokens: r.tokens,
  rows: r.rows,
  activations_b64: Object.fromEntries(Object.entries(r.activations).map(([l, a]) => [l, b64(a)])),
  ...(r.lens && { lens_b64: b64(r.lens) }),
});
export const activationsFromWire = (w: WireActivations): ActivationsResult => ({
  tokens: w.tokens,
  rows: w.rows,
  activations: Object.fromEntries(Object.entries(w.activations_b64).map(([l, s]) => [l, f32(s)])),
  ...(w.lens_b64 && { lens: f32(w.lens_b64) }),
});

/** A worker's KV cache report (JSON), refreshed while it runs: /metrics sums them. */
export const kvKey = (prefix: string, worker: string) => `${prefix}kv:${worker}`;
export const KV_TTL_MS = 15_000;

/** Every live worker's KV cache report. */
export async function workerKvReports(redis: Redis, prefix: string): Promise<KvReport[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', kvKey(prefix, '*'), 'COUNT', 100);
    cursor = next;
    keys.push(...found);
  } while (cursor !== '0');
  if (!keys.length) return [];
  return (await redis.mget(keys)).flatMap((v) => (v ? [JSON.parse(v) as KvReport] : []));
}
