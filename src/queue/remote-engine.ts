import { randomUUID } from 'node:crypto';
import { Job, Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { drawSeed } from '../engine/defaults.js';
import { EventStream } from '../engine/event-stream.js';
import { modelInfo } from '../engine/model-info.js';
import type {
  ActivationsRequest,
  ActivationsResult,
  DoneEvent,
  GenerateEvent,
  GenerateRequest,
  Intervention,
  ModelInfo,
} from '../engine/types.js';
import { validateActivations, validateGenerate } from '../engine/validate.js';
import { QueueFullError, SteerdError, UnavailableError } from '../errors.js';
import { openCheckpoint } from '../model/checkpoint.js';
import type { Dtype } from '../model/dtypes.js';
import type { Site } from '../model/hooks.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { vectorHash } from '../store/content.js';
import { valuesKey } from '../store/redis-vectors.js';
import {
  activationsFromWire,
  b64,
  bullPrefix,
  cancelChannel,
  cancelKey,
  type JobData,
  type Progress,
  queueName,
  TokenSequence,
  toWire,
  type WireActivations,
  type WireFailure,
  type WireIntervention,
} from './jobs.js';

/**
 * For each key: 1 if it exists (a volatile one then lives another ARGV[1] seconds at least; a
 * registered vector's stays persistent), else 0.
 */
const TOUCH = `
local found = {}
for i, k in ipairs(KEYS) do
  found[i] = redis.call('EXISTS', k)
  if found[i] == 1 then redis.call('EXPIRE', k, ARGV[1], 'GT') end
end
return found`;

export interface RemoteEngineOptions {
  /** The checkpoint directory: its config and tokenizer (no weights are loaded here). */
  model: string;
  redisUrl: string;
  /** Redis key prefix. Default `steerd:`. */
  prefix?: string;
  /** Longest prompt + max_new_tokens accepted. Default n_positions. */
  maxContext?: number;
  /** The hook sites the workers' serving graph has (STEERD_HOOK_SITES: the same on every process). Default all. */
  hookSites?: Site[];
  /** The workers' weights dtype (STEERD_DTYPE: the same on every process). Default float32. */
  dtype?: Dtype;
  /** Kept finished jobs: age in seconds and count. Default 3600 s, 1000 jobs. */
  keepCompleted?: { age: number; count: number };
  /**
   * Jobs waiting or running in the shared queue, all API processes together, beyond which new
   * requests get 429. Checked before each enqueue, so processes admitting at the same instant can
   * overshoot it by one each. Default: no limit.
   */
  maxDepth?: number;
  /**
   * How long an activations request waits for its result, ms (generation is bounded by the caller's
   * signal). Default 300000.
   */
  timeoutMs?: number;
  /**
   * After a generation is cancelled, how long to wait for its worker to confirm before ending the
   * request here (a worker may be gone, or Redis), ms (config.ts: STEERD_QUEUE_CANCEL_GRACE_MS).
   */
  cancelGraceMs: number;
}

/**
 * Seconds inline vectors' values are kept after their last use: a job needs them only until it
 * has run (three times the default request time limit).
 */
export const INLINE_TTL_S = 900;

type Settings = Required<
  Pick<RemoteEngineOptions, 'prefix' | 'keepCompleted' | 'maxDepth' | 'timeoutMs' | 'cancelGraceMs'>
>;

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
    readonly tokenizer: Tokenizer,
    private readonly queue: Queue<JobData>,
    private readonly eventsOpts: ConstructorParameters<typeof QueueEvents>[1],
    private readonly conns: Redis[],
    private readonly o: Settings,
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
    const events = new QueueEvents(queueName(this.info.fingerprint), this.eventsOpts);
    events.on('error', () => undefined);
    events.on('progress', ({ jobId, data }) => this.listeners.get(jobId)?.progress(data as unknown as Progress));
    events.on('completed', ({ jobId, returnvalue }) => this.listeners.get(jobId)?.completed(returnvalue));
    events.on('failed', ({ jobId, failedReason }) => this.listeners.get(jobId)?.failed(failedReason));
    this.events = events;
    return events;
  }

  static async open(o: RemoteEngineOptions): Promise<RemoteEngine> {
    const ck = openCheckpoint(o.model);
    const tokenizer = ck.family.tokenizer(o.model);
    const prefix = o.prefix ?? 'steerd:';
    // The producer fails fast while Redis is away (503); the event listener waits and reconnects.
    // Our own connections, so that close() can stop their reconnecting even while Redis is away.
    const qConn = new Redis(o.redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
    const eConn = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
    for (const c of [qConn, eConn]) c.on('error', () => undefined);
    const info = modelInfo(ck, 'queue', o.hookSites, o.dtype, 'queue');
    const queue = new Queue<JobData>(queueName(info.fingerprint), { connection: qConn, prefix: bullPrefix(prefix) });
    queue.on('error', () => undefined);
    const pub = new Redis(o.redisUrl, { maxRetriesPerRequest: 1 });
    pub.on('error', () => undefined);
    const events = { connection: eConn, prefix: bullPrefix(prefix) };
    const engine = new RemoteEngine(
      info,
      tokenizer,
      queue,
      events,
      [pub, qConn, eConn],
      {
        prefix,
        keepCompleted: o.keepCompleted ?? { age: 3600, count: 1000 },
        maxDepth: o.maxDepth ?? Infinity,
        timeoutMs: o.timeoutMs ?? 300_000,
        cancelGraceMs: o.cancelGraceMs,
      },
      o.maxContext,
    );
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

  /** Not closing, and the producer's and publisher's connections are up (they come back after Redis does). */
  get ready(): boolean {
    return !this.closing && this.conns.every((c) => c.status === 'ready');
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

  /**
   * The job's interventions by hash. Registered vectors' values are in the registry already; inline
   * ones are put there (content-addressed, kept `INLINE_TTL_S`), once per distinct vector.
   */
  private async share(list: Intervention[] = []): Promise<WireIntervention[]> {
    const H = this.info.n_embd;
    const wire = toWire(list, (iv) => iv.hash ?? vectorHash(iv.rows === 1 ? [H] : [iv.rows, H], iv.values));
    if (!wire.length) return wire;
    const redis = this.conns[1];
    const keys = wire.map((w) => valuesKey(this.o.prefix, w.hash));
    const found = (await redis.eval(TOUCH, keys.length, ...keys, INLINE_TTL_S)) as number[];
    const upload = redis.multi();
    found.forEach((f, i) => {
      if (!f)
        upload.set(
          keys[i],
          Buffer.from(list[i].values.buffer, list[i].values.byteOffset, list[i].values.byteLength),
          'EX',
          INLINE_TTL_S,
          'NX',
        );
    });
    if (found.includes(0)) await upload.exec();
    return wire;
  }

  private async enqueue(
    id: string,
    make: (interventions: WireIntervention[]) => JobData,
    interventions?: Intervention[],
  ): Promise<void> {
    try {
      // events must be listened to before the job exists; both connections get a second to be up
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        (async () => {
          await this.queue.waitUntilReady();
          await this.listen().waitUntilReady();
        })(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('not connected')), 1000))),
      ]).finally(() => clearTimeout(timer));
      if (this.o.maxDepth < Infinity) {
        const counts = await this.queue.getJobCounts('active', 'waiting', 'prioritized', 'delayed', 'paused');
        const depth = Object.values(counts).reduce((a, b) => a + b, 0);
        if (depth >= this.o.maxDepth)
          throw new QueueFullError(
            `the queue is full (${depth} requests waiting or running across the deployment); retry later`,
            this.o.maxDepth,
          );
      }
      const data = make(await this.share(interventions));
      await this.queue.add(data.kind, data, {
        jobId: id,
        attempts: 3,
        backoff: { type: 'fixed', delay: 200 },
        removeOnComplete: this.o.keepCompleted,
        removeOnFail: { age: 24 * 3600 },
      });
    } catch (e) {
      if (e instanceof SteerdError) throw e;
      throw new UnavailableError(`the queue (Redis) is unavailable: ${(e as Error).message}`);
    }
  }

  /**
   * Cancels a job: removed while it waits (then `removed` is called: no worker will answer), else
   * marked cancelled and its worker told to retire it.
   */
  private async cancel(id: string, removed: () => void = () => undefined): Promise<void> {
    try {
      const job = await Job.fromId(this.queue, id);
      if (!job) return;
      if ((await job.getState()) === 'waiting') {
        try {
          await job.remove();
          return removed();
        } catch {
          // a worker took it meanwhile
        }
      }
      await this.conns[0].set(cancelKey(this.o.prefix, id), '1', 'EX', 3600);
      await this.conns[0].publish(cancelChannel(this.o.prefix), id);
    } catch {
      // the job finished meanwhile, or Redis is away: nothing left to cancel
    }
  }

  generate(request: GenerateRequest, opts: { signal?: AbortSignal } = {}): AsyncIterable<GenerateEvent> {
    if (this.closing) throw new UnavailableError('the server is shutting down');
    validateGenerate(request, this.info, this.maxContext);
    // seeded here, so that a job retried on another worker samples the same tokens
    const req = { ...request, seed: request.seed ?? drawSeed() };
    const id = randomUUID();
    const self = this;
    return {
      async *[Symbol.asyncIterator]() {
        const stream = new EventStream<GenerateEvent>();
        const submitted = performance.now();
        const tokens = new TokenSequence();
        self.listeners.set(id, {
          progress(p) {
            try {
              const e = tokens.accept(p);
              if (e) stream.push(e);
            } catch (err) {
              stream.fail(err as Error);
              void self.cancel(id);
            }
          },
          completed: (v) => stream.push(v as DoneEvent),
          failed: (reason) => stream.fail(self.failure(reason)),
        });
        self.count++;
        // Removed before any worker took it, or its worker silent past the grace period (gone, or
        // Redis is): the request ends here, as the engine ends a cancelled one.
        const ended = () => {
          if (stream.settled) return;
          const ms = performance.now() - submitted;
          const usage = { prompt_tokens: req.prompt.length, completion_tokens: tokens.generated };
          stream.push({
            type: 'done',
            finish_reason: 'cancelled',
            text: '',
            seed: req.seed,
            usage,
            timings: { queue_ms: ms, first_token_ms: ms, total_ms: ms },
          });
        };
        let grace: NodeJS.Timeout | undefined;
        const onAbort = () => {
          grace = setTimeout(ended, self.o.cancelGraceMs);
          void self.cancel(id, ended);
        };
        try {
          await self.enqueue(
            id,
            (interventions) => ({ kind: 'generate', req: { ...req, interventions } }),
            req.interventions,
          );
          if (opts.signal?.aborted) onAbort();
          else opts.signal?.addEventListener('abort', onAbort, { once: true });
          yield* stream.drain();
        } finally {
          clearTimeout(grace);
          opts.signal?.removeEventListener('abort', onAbort);
          if (!stream.settled) void self.cancel(id);
          self.listeners.delete(id);
          self.count--;
        }
      },
    };
  }

  /** Activations, from a worker; a result that does not come within `timeoutMs` is a 504. */
  async activations(req: ActivationsRequest): Promise<ActivationsResult> {
    if (this.closing) throw new UnavailableError('the server is shutting down');
    validateActivations(req, this.info, this.maxContext);
    const id = randomUUID();
    this.count++;
    let timer: NodeJS.Timeout | undefined;
    try {
      const result = new Promise<ActivationsResult>((resolve, reject) => {
        this.listeners.set(id, {
          progress() {},
          completed: (v) => resolve(activationsFromWire(v as WireActivations)),
          failed: (reason) => reject(this.failure(reason)),
        });
        timer = setTimeout(() => {
          void this.cancel(id);
          reject(new SteerdError(`no worker answered within the time limit (${this.o.timeoutMs} ms)`, 504, 'timeout'));
        }, this.o.timeoutMs);
      });
      result.catch(() => undefined); // rejected by the timer while the enqueue still runs
      await this.enqueue(
        id,
        (interventions) => {
          const { lens, ...rest } = req;
          return { kind: 'activations', req: { ...rest, interventions, ...(lens && { lens_b64: b64(lens) }) } };
        },
        req.interventions,
      );
      return await result;
    } finally {
      clearTimeout(timer);
      this.listeners.delete(id);
      this.count--;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    // a graceful close waits for Redis; do not wait for one that is gone
    const within = async (p: Promise<unknown>) => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([p.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 1000)))]);
      clearTimeout(timer);
    };
    // requests still waiting for a worker end now (a drain has let the others finish), their jobs
    // removed or cancelled: nobody would read their results
    const ids = [...this.listeners.keys()];
    const gone: WireFailure = { status: 503, code: 'unavailable', message: 'the server is shutting down' };
    for (const l of this.listeners.values()) l.failed(JSON.stringify(gone));
    await within(Promise.all(ids.map((id) => this.cancel(id))));
    if (this.events) await within(this.events.close());
    await within(this.queue.close());
    for (const c of this.conns) c.disconnect();
  }
}
