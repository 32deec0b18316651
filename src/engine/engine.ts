import { Worker } from 'node:worker_threads';
import { SteerdError, UnavailableError } from '../errors.js';
import { loadTokenizer } from '../model/families.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { EventStream } from './event-stream.js';
import type { KvUsage } from './kv/manager.js';
import type { RunnerOptions } from './runner.js';
import type { SchedulerOptions } from './scheduler.js';
import type { FromThread, ToThread, WireError } from './thread-messages.js';
import type { ActivationsRequest, ActivationsResult, GenerateEvent, GenerateRequest, ModelInfo } from './types.js';
import { validateActivations, validateGenerate } from './validate.js';

/** Engine options: the model runner's and the scheduler's (the KV budget's among them), plus the context limit. */
export interface EngineOptions extends RunnerOptions, SchedulerOptions {
  /** Longest prompt + max_new_tokens accepted; at most the model's n_positions. Default n_positions. */
  maxContext?: number;
}

const toError = (e: WireError) => new SteerdError(e.message, e.status, e.code);

/**
 * The main thread's handle on the engine thread (thread.ts). Requests are validated here, before they are
 * posted, so that a bad request never reaches a batch.
 */
export class Engine {
  private nextId = 1;
  private readonly streams = new Map<number, EventStream<GenerateEvent>>();
  private readonly calls = new Map<number, { resolve(r: ActivationsResult): void; reject(e: Error): void }>();
  private closing: Promise<void> | undefined;
  private stopped = false;
  private closed!: () => void;
  /** The KV cache's reservation and memory, as last reported by the engine thread. */
  kvUsage: KvUsage = { used: 0, tokens: 0, bytes: 0, hostBytes: { input: 0, output: 0, runs: 0 } };
  /** Called when the engine thread reports a new reservation total. */
  onKvUsage?: () => void;

  private constructor(
    /** The engine thread (tests reach it by this name). */
    private readonly thread: Worker,
    readonly info: ModelInfo,
    readonly tokenizer: Tokenizer,
    readonly maxContext: number,
  ) {
    thread.on('message', (m: FromThread) => this.onMessage(m));
    thread.on('error', (e) => this.failAll(e));
    thread.on('exit', () => {
      this.stopped = true;
      this.failAll(new UnavailableError('the engine stopped'));
    });
  }

  /** Starts the engine thread, loads the model there, and resolves once it is ready to serve. */
  static async start(opts: EngineOptions): Promise<Engine> {
    const tokenizer = loadTokenizer(opts.model);
    const thread = new Worker(new URL('./thread-entry.js', import.meta.url), { workerData: { ...opts } });
    const info = await new Promise<ModelInfo>((resolve, reject) => {
      const onMessage = (m: FromThread) => {
        if (m.type === 'ready') resolve(m.info);
        else if (m.type === 'start-error') reject(toError(m.error));
        else return;
        thread.off('message', onMessage);
      };
      thread.on('message', onMessage);
      thread.once('error', reject);
      thread.once('exit', (code) => reject(new UnavailableError(`the engine exited during start (code ${code})`)));
    });
    const maxContext = Math.min(opts.maxContext ?? info.n_positions, info.n_positions);
    return new Engine(thread, info, tokenizer, maxContext);
  }

  /**
   * Generates for one request: validated now (throws before anything is queued), then an async
   * iterable of `token` events and one final `done` event. Aborting `signal` retires the row at
   * the next step; the iterable then ends with `finish_reason: "cancelled"`.
   */
  generate(req: GenerateRequest, opts: { signal?: AbortSignal } = {}): AsyncIterable<GenerateEvent> {
    if (this.stopped) throw new UnavailableError('the engine stopped');
    if (this.closing) throw new UnavailableError('the engine is shutting down');
    validateGenerate(req, this.info, this.maxContext);
    const id = this.nextId++;
    const stream = new EventStream<GenerateEvent>();
    this.streams.set(id, stream);
    this.post({ type: 'generate', id, req });
    const onAbort = () => this.post({ type: 'cancel', id });
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    const self = this;
    return {
      async *[Symbol.asyncIterator]() {
        try {
          yield* stream.drain();
        } finally {
          opts.signal?.removeEventListener('abort', onAbort);
          if (!stream.settled) self.post({ type: 'cancel', id }); // the consumer stopped early
          self.streams.delete(id);
        }
      },
    };
  }

  /** Residual-stream activations of a prompt (validated now). */
  activations(req: ActivationsRequest): Promise<ActivationsResult> {
    if (this.stopped) return Promise.reject(new UnavailableError('the engine stopped'));
    if (this.closing) return Promise.reject(new UnavailableError('the engine is shutting down'));
    try {
      validateActivations(req, this.info, this.maxContext);
    } catch (e) {
      return Promise.reject(e);
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.post({ type: 'activations', id, req });
    });
  }

  /** True until the engine thread stops or close() is called. */
  get ready(): boolean {
    return !this.closing && !this.stopped;
  }

  /** Requests in flight (streams not finished, activation calls not answered). */
  get inFlight(): number {
    return this.streams.size + this.calls.size;
  }

  /** Stops taking work, lets what is in flight finish, then stops the engine thread. */
  close(): Promise<void> {
    this.closing ??= this.stopped
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          this.closed = resolve;
          this.post({ type: 'close' });
        });
    return this.closing;
  }

  private post(m: ToThread): void {
    this.thread.postMessage(m);
  }

  private onMessage(m: FromThread): void {
    switch (m.type) {
      case 'event': {
        const stream = this.streams.get(m.id);
        stream?.push(m.event);
        // an ended run leaves no entry, whether or not anyone reads it: a request refused after
        // posting it (a sibling run failed) may never iterate it
        if (stream?.settled) this.streams.delete(m.id);
        break;
      }
      case 'activations': {
        const c = this.calls.get(m.id);
        this.calls.delete(m.id);
        c?.resolve(m.result);
        break;
      }
      case 'error': {
        const err = toError(m.error);
        this.streams.get(m.id)?.fail(err);
        this.streams.delete(m.id);
        const c = this.calls.get(m.id);
        this.calls.delete(m.id);
        c?.reject(err);
        break;
      }
      case 'kv':
        this.kvUsage = m.usage;
        this.onKvUsage?.();
        break;
      case 'closed':
        void this.thread.terminate().then(() => this.closed?.());
        break;
    }
  }

  private failAll(e: Error): void {
    this.stopped = true;
    for (const s of this.streams.values()) s.fail(e);
    for (const c of this.calls.values()) c.reject(e);
    this.calls.clear();
    this.closed?.();
  }
}
