import { Job, Queue, QueueEvents } from 'bullmq';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { SteerdError, UnavailableError } from '../errors.js';
import { openCheckpoint } from '../model/checkpoint.js';
import { Gpt2Tokenizer } from '../model/tokenizer.js';
import type { ActivationsRequest, ActivationsResult, DoneEvent, GenerateEvent, GenerateRequest, ModelInfo } from '../engine/types.js';
import { validateActivations, validateGenerate } from '../engine/validate.js';
import { modelInfo } from '../engine/model-info.js';
import { EventStream } from '../engine/event-stream.js';
import { activationsFromWire, bullPrefix, cancelChannel, QUEUE, toWire, type JobData, type Progress, type WireActivations, type WireFailure } from './protocol.js';

export interface RemoteEngineOptions {
  /** The checkpoint directory: its config and tokenizer (no weights are loaded here). */
  model: string;
  redisUrl: string;
  /** Redis key prefix. Default `steerd:`. */
  prefix?: string;
  /** Longest prompt + max_new_tokens accepted. Default n_positions. */
  maxContext?: number;
  /** Kept finished jobs: age in seconds and count. Default 3600 s, 1000 jobs. */
  keepCompleted?: { age: number; count: number };
}

type Listener = { progress(p: Progress): void; completed(v: unknown): void; failed(reason: string): void };

/**
 * The engine, on the other side of a BullMQ queue: the same surface as `Engine`, for `steerd serve`
 * with REDIS_URL. Requests are validated here and enqueued; `steerd worker` processes run them.
 */
export class RemoteEngine {
  readonly maxContext: number;
  private readonly listeners = new Map<string, Listener>();
  private count = 0;
  private closing = false;

  private constructor(
    readonly info: ModelInfo,
    readonly tokenizer: Gpt2Tokenizer,
    private readonly queue: Queue<JobData>,
    private readonly eventsOpts: ConstructorParameters<typeof QueueEvents>[1],
    private readonly conns: Redis[],
    private readonly prefix: string,
    private readonly keep: { age: number; count: number },
    maxContext: number | undefined,
  ) {
    this.maxContext = Math.min(maxContext ?? info.n_positions, info.n_positions);
  }

  private events?: QueueEvents;

  /**
   * The job-event listener, created once Redis has answered: BullMQ's QueueEvents keeps
   * reconnecting a connection that never came up, even after close().
   */
  private listen(): QueueEvents {
    if (this.events) return this.events;
    if (this.closing || this.conns[1].status !== 'ready') throw new Error('not connected');
    const events = new QueueEvents(QUEUE, this.eventsOpts);
    events.on('error', () => undefined);
    events.on('progress', ({ jobId, data }) => this.listeners.get(jobId)?.progress(data as unknown as Progress));
    events.on('completed', ({ jobId, returnvalue }) => this.listeners.get(jobId)?.completed(returnvalue));
    events.on('failed', ({ jobId, failedReason }) => this.listeners.get(jobId)?.failed(failedReason));
    return (this.events = events);
  }

  static async open(o: RemoteEngineOptions): Promise<RemoteEngine> {
    const ck = openCheckpoint(o.model);
    const tokenizer = Gpt2Tokenizer.fromDir(o.model);
    const prefix = o.prefix ?? 'steerd:';
    // The producer fails fast while Redis is away (503); the event listener waits and reconnects.
    // Our own connections, so that close() can stop their reconnecting even while Redis is away.
    const qConn = new Redis(o.redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
    const eConn = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
    for (const c of [qConn, eConn]) c.on('error', () => undefined);
    const queue = new Queue<JobData>(QUEUE, { connection: qConn, prefix: bullPrefix(prefix) });
    queue.on('error', () => undefined);
    const pub = new Redis(o.redisUrl, { maxRetriesPerRequest: 1 });
    pub.on('error', () => undefined);
    const info = modelInfo(ck, 'queue');
    const engine = new RemoteEngine(info, tokenizer, queue, { connection: eConn, prefix: bullPrefix(prefix) }, [pub, qConn, eConn], prefix, o.keepCompleted ?? { age: 3600, count: 1000 }, o.maxContext);
    // Listen from the start when Redis is there (within a second); else the first request will.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      const up = () => {
        clearTimeout(timer);
        try {
          engine.listen();
        } catch {
          // closed meanwhile
        }
        resolve();
      };
      if (qConn.status === 'ready') up();
      else qConn.once('ready', up);
    });
    return engine;
  }

  get ready(): boolean {
    return !this.closing;
  }

  get inFlight(): number {
    return this.count;
  }

  private failure(reason: string): SteerdError {
    try {
      const f = JSON.parse(reason) as WireFailure;
      return new SteerdError(f.message, f.status, f.code);
    } catch {
      return new SteerdError(`the worker failed: ${reason}`, 500, 'engine_error');
    }
  }

  private async enqueue(id: string, data: JobData): Promise<void> {
    try {
      // events must be listened to before the job exists; both connections get a second to be up
      await Promise.race([
        (async () => {
          await this.queue.waitUntilReady();
          await this.listen().waitUntilReady();
        })(),
        new Promise((_, reject) => setTimeout(() => reject(new Error('not connected')), 1000)),
      ]);
      await this.queue.add(data.kind, data, {
        jobId: id,
        attempts: 3,
        backoff: { type: 'fixed', delay: 200 },
        removeOnComplete: this.keep,
        removeOnFail: { age: 24 * 3600 },
      });
    } catch (e) {
      throw new UnavailableError(`the queue (Redis) is unavailable: ${(e as Error).message}`);
    }
  }

  /** Cancels a job: removed while it waits, else its worker is told to retire it. */
  private async cancel(id: string): Promise<void> {
    try {
      const job = await Job.fromId(this.queue, id);
      if (job && (await job.getState()) === 'waiting') await job.remove();
      else await this.conns[0].publish(cancelChannel(this.prefix), id);
    } catch {
      // the job finished meanwhile, or Redis is away: nothing left to cancel
    }
  }

  generate(req: GenerateRequest, opts: { signal?: AbortSignal } = {}): AsyncIterable<GenerateEvent> {
    if (this.closing) throw new UnavailableError('the server is shutting down');
    validateGenerate(req, this.info, this.maxContext);
    const id = randomUUID();
    const self = this;
    return {
      async *[Symbol.asyncIterator]() {
        const stream = new EventStream<GenerateEvent>();
        let seen = 0; // tokens already yielded: a retried job repeats them (same seed, same tokens)
        self.listeners.set(id, {
          progress(p) {
            if (p.i < seen) return;
            seen = p.i + 1;
            stream.push(p.e);
          },
          completed: (v) => stream.push(v as DoneEvent),
          failed: (reason) => stream.fail(self.failure(reason)),
        });
        self.count++;
        const onAbort = () => void self.cancel(id);
        try {
          await self.enqueue(id, { kind: 'generate', req: { ...req, interventions: toWire(req.interventions) } });
          if (opts.signal?.aborted) onAbort();
          else opts.signal?.addEventListener('abort', onAbort, { once: true });
          yield* stream.drain();
        } finally {
          opts.signal?.removeEventListener('abort', onAbort);
          if (!stream.settled) void self.cancel(id);
          self.listeners.delete(id);
          self.count--;
        }
      },
    };
  }

  async activations(req: ActivationsRequest): Promise<ActivationsResult> {
    if (this.closing) throw new UnavailableError('the server is shutting down');
    validateActivations(req, this.info, this.maxContext);
    const id = randomUUID();
    this.count++;
    try {
      const result = new Promise<ActivationsResult>((resolve, reject) => {
        this.listeners.set(id, {
          progress() {},
          completed: (v) => resolve(activationsFromWire(v as WireActivations)),
          failed: (reason) => reject(this.failure(reason)),
        });
      });
      await this.enqueue(id, { kind: 'activations', req: { ...req, interventions: toWire(req.interventions) } });
      return await result;
    } finally {
      this.listeners.delete(id);
      this.count--;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    // a graceful close waits for Redis; do not wait for one that is gone
    const within = (p: Promise<unknown>) => Promise.race([p.catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
    if (this.events) await within(this.events.close());
    await within(this.queue.close());
    for (const c of this.conns) c.disconnect();
  }
}
