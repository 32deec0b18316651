import { randomUUID } from 'node:crypto';
import { type Job, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { SAMPLING_DEFAULTS } from '../engine/defaults.js';
import type { Engine } from '../engine/engine.js';
import { reservedTokens } from '../engine/kv/budget.js';
import type { DoneEvent } from '../engine/types.js';
import { SteerdError } from '../errors.js';
import {
  activationsToWire,
  bullPrefix,
  cancelChannel,
  cancelKey,
  f32,
  type JobData,
  KV_TTL_MS,
  kvKey,
  queueName,
  type WireFailure,
} from './jobs.js';
import { VectorCache } from './vector-cache.js';

/** A worker's host byte counters reach Redis at most this often, in ms (its reservation at once). */
const KV_REPORT_MS = 100;

/** Options of a queue consumer (a `steerd worker` process, or `serve --worker`). */
export interface QueueConsumerOptions {
  redisUrl: string;
  /** Redis key prefix. Default `steerd:`. */
  prefix?: string;
  /** Jobs taken at once: the engine's batch capacity, so that a busy queue keeps batches full. */
  concurrency: number;
  /** BullMQ lock duration in ms: a worker silent for longer loses its jobs to another. Default 30000. */
  lockDuration?: number;
  /** How often stalled jobs are looked for, ms. Default 30000. */
  stalledInterval?: number;
}

/**
 * Consumes generation and activation jobs with a local engine, from the queue of the model it has
 * loaded. Every job goes straight to the engine's scheduler, which batches them; steering vectors
 * come from the registry by hash (cached); tokens go back as job progress, the result as the
 * job's return value. Requests the engine refuses fail without retry; crashes are retried.
 */
export async function startQueueConsumer(engine: Engine, o: QueueConsumerOptions) {
  const prefix = o.prefix ?? 'steerd:';
  const workerId = randomUUID();
  const active = new Map<string, AbortController>();
  const sub = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  sub.on('error', () => undefined);
  await sub.subscribe(cancelChannel(prefix));
  sub.on('message', (_channel, id: string) => active.get(id)?.abort());
  const data = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  data.on('error', () => undefined);
  const vectors = new VectorCache(data, prefix, engine.info.n_embd);

  // Take no more jobs than the engine can admit: the KV cache the jobs taken reserve (their size
  // classes, kv/budget.ts) is counted, and another job is taken only while what is left holds the
  // smallest class. A job larger than what is left waits in this worker's engine, in order.
  const kv = engine.info.kv_cache!;
  const reserved = new Map<string, number>();
  const admit = () => {
    const free = kv.tokens - [...reserved.values()].reduce((a, n) => a + n, 0);
    worker.concurrency = Math.max(1, Math.min(o.concurrency, reserved.size + (free >= kv.classes[0] ? 1 : 0)));
  };
  const reserve = (d: JobData) => {
    if (d.kind !== 'generate') return 0; // a prompt pass holds no cache
    return reservedTokens(kv.classes, d.req.prompt.length + (d.req.max_new_tokens ?? SAMPLING_DEFAULTS.max_new_tokens));
  };
  const reportKv = () =>
    data
      .set(
        kvKey(prefix, workerId),
        JSON.stringify({ used: engine.kvUsage.used, tokens: kv.tokens, hostBytes: engine.kvUsage.hostBytes }),
        'PX',
        KV_TTL_MS,
      )
      .catch(() => undefined);
  const kvTimer = setInterval(reportKv, KV_TTL_MS / 3);
  // the engine reports after every pass: Redis hears of a changed reservation at once, of the host
  // byte counters at most every KV_REPORT_MS (one write per pass would be one per decoded token)
  let reportedUsed = -1;
  let pending: NodeJS.Timeout | undefined;
  engine.onKvUsage = () => {
    if (engine.kvUsage.used !== reportedUsed) {
      reportedUsed = engine.kvUsage.used;
      clearTimeout(pending);
      pending = undefined;
      void reportKv();
    } else
      pending ??= setTimeout(() => {
        pending = undefined;
        void reportKv();
      }, KV_REPORT_MS);
  };

  const processor = async (job: Job<JobData>) => {
    const ac = new AbortController();
    active.set(job.id!, ac);
    reserved.set(job.id!, reserve(job.data));
    admit();
    try {
      if (await data.exists(cancelKey(prefix, job.id!))) ac.abort(); // cancelled before it got here
      const interventions = await vectors.resolve(job.data.req.interventions);
      if (job.data.kind === 'activations') {
        const { lens_b64, ...req } = job.data.req;
        return activationsToWire(
          await engine.activations({ ...req, interventions, ...(lens_b64 && { lens: f32(lens_b64) }) }),
        );
      }
      let i = 0;
      let done: DoneEvent | undefined;
      for await (const e of engine.generate({ ...job.data.req, interventions }, { signal: ac.signal })) {
        if (e.type === 'done') done = e;
        else {
          await job.updateProgress({ i: i++, e });
          // a cancel published while the subscriber was reconnecting is lost: look every 32 tokens
          if (i % 32 === 0 && (await data.exists(cancelKey(prefix, job.id!)))) ac.abort();
        }
      }
      return done;
    } catch (e) {
      if (e instanceof SteerdError && e.status < 500) {
        const f: WireFailure = { status: e.status, code: e.code, message: e.message };
        throw new UnrecoverableError(JSON.stringify(f));
      }
      throw e;
    } finally {
      active.delete(job.id!);
      reserved.delete(job.id!);
      admit();
    }
  };
  const worker = new Worker<JobData>(queueName(engine.info.fingerprint), processor, {
    connection: { url: o.redisUrl, maxRetriesPerRequest: null } as never,
    prefix: bullPrefix(prefix),
    concurrency: Math.min(o.concurrency, Math.max(1, Math.floor(kv.tokens / kv.classes[0]))),
    lockDuration: o.lockDuration ?? 30_000,
    stalledInterval: o.stalledInterval ?? 30_000,
  });
  worker.on('error', () => undefined); // connection errors: BullMQ reconnects by itself
  await worker.waitUntilReady();
  return {
    worker,
    /** Stops taking jobs, lets the active ones finish, then disconnects. */
    async close() {
      clearInterval(kvTimer);
      clearTimeout(pending);
      await worker.close();
      await data.del(kvKey(prefix, workerId)).catch(() => undefined);
      sub.disconnect();
      data.disconnect();
    },
  };
}
