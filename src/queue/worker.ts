import { type Job, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Engine } from '../engine/engine.js';
import type { DoneEvent } from '../engine/types.js';
import { SteerdError } from '../errors.js';
import {
  activationsToWire,
  bullPrefix,
  cancelChannel,
  cancelKey,
  type JobData,
  queueName,
  type WireFailure,
} from './protocol.js';
import { VectorCache } from './vector-cache.js';

/** Options of a queue worker. */
export interface QueueWorkerOptions {
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
export async function startQueueWorker(engine: Engine, o: QueueWorkerOptions) {
  const prefix = o.prefix ?? 'steerd:';
  const active = new Map<string, AbortController>();
  const sub = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  sub.on('error', () => undefined);
  await sub.subscribe(cancelChannel(prefix));
  sub.on('message', (_channel, id: string) => active.get(id)?.abort());
  const data = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  data.on('error', () => undefined);
  const vectors = new VectorCache(data, prefix, engine.info.n_embd);

  const processor = async (job: Job<JobData>) => {
    const ac = new AbortController();
    active.set(job.id!, ac);
    try {
      if (await data.exists(cancelKey(prefix, job.id!))) ac.abort(); // cancelled before it got here
      const interventions = await vectors.resolve(job.data.req.interventions);
      if (job.data.kind === 'activations')
        return activationsToWire(await engine.activations({ ...job.data.req, interventions }));
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
    }
  };
  const worker = new Worker<JobData>(queueName(engine.info.fingerprint), processor, {
    connection: { url: o.redisUrl, maxRetriesPerRequest: null } as never,
    prefix: bullPrefix(prefix),
    concurrency: o.concurrency,
    lockDuration: o.lockDuration ?? 30_000,
    stalledInterval: o.stalledInterval ?? 30_000,
  });
  worker.on('error', () => undefined); // connection errors: BullMQ reconnects by itself
  await worker.waitUntilReady();
  return {
    worker,
    /** Stops taking jobs, lets the active ones finish, then disconnects. */
    async close() {
      await worker.close();
      sub.disconnect();
      data.disconnect();
    },
  };
}
