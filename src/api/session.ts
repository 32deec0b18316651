import { setMaxListeners } from 'node:events';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { DoneEvent, GenerateEvent, GenerateRequest } from '../engine/types.js';
import { validateGenerate } from '../engine/validate.js';
import { SteerdError } from '../errors.js';
import { type ApiToken, apiToken } from './completion.js';
import { admit, tracked } from './generation.js';
import type { Service } from './service.js';

type SseMessage = Parameters<NonNullable<FastifyReply['sse']>['send']>[0];

/** A run's events collected: its tokens as the API shows them, and its `done` event. */
export interface Collected {
  tokens: ApiToken[];
  done: DoneEvent;
}

const timeoutError = (svc: Service) =>
  new SteerdError(`the request ran past its time limit (${svc.config.limits.requestTimeoutMs} ms)`, 504, 'timeout');

/**
 * One request's life (docs/architecture.md §2), owned in one place as llama.cpp's server gives
 * each request a reader of its own. Every run the request will start is checked before any is
 * posted, so that a refused run leaves nothing running; then all are admitted together. The runs
 * share one abort signal, fired when the client goes, when the time limit passes or when any run
 * fails, so that no run outlives its request; and admission is released exactly once, after the
 * runs have ended.
 */
export class Session {
  private readonly ac = new AbortController();
  private readonly runs: Promise<unknown>[] = [];
  private timedOut = false;
  private readonly timer: NodeJS.Timeout;
  private readonly onClose = () => {
    if (!this.reply.raw.writableFinished) this.abort();
  };
  /** Aborts every run of the request (also the server's, at the end of a drain). */
  readonly abort = () => this.ac.abort();
  private readonly gone: Promise<void>;

  private constructor(
    private readonly svc: Service,
    request: FastifyRequest,
    private readonly reply: FastifyReply,
    private readonly release: () => void,
  ) {
    setMaxListeners(0, this.ac.signal); // every run listens to it (a sweep: one per cell)
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.abort();
    }, svc.config.limits.requestTimeoutMs);
    reply.raw.on('close', this.onClose);
    // the client may have gone while the body was parsed and the request checked
    if (reply.raw.destroyed || request.raw.socket?.destroyed) this.abort();
    svc.aborts.add(this.abort);
    const signal = this.ac.signal;
    this.gone = new Promise<void>((r) =>
      signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true }),
    );
  }

  /**
   * Opens a request's session for its runs (every engine request it will post): each is checked
   * by the engine's own rules first (`where(i)`, when given, names run i in the message), then
   * they are admitted together (503 while draining, 429 while the queue is full).
   */
  static open(
    svc: Service,
    request: FastifyRequest,
    reply: FastifyReply,
    runs: GenerateRequest[],
    where?: (i: number) => string,
  ): Session {
    for (const [i, req] of runs.entries()) {
      try {
        validateGenerate(req, svc.engine.info, svc.engine.maxContext);
      } catch (e) {
        if (!where || !(e instanceof SteerdError)) throw e;
        throw new SteerdError(`${where(i)}: ${e.message}`, e.status, e.code, e.details);
      }
    }
    return new Session(svc, request, reply, admit(svc, runs.length));
  }

  get signal(): AbortSignal {
    return this.ac.signal;
  }

  /**
   * Posts a run to the engine and hands its events (counted in the metrics) to `read`; a failure
   * of the run aborts every other run of the request.
   */
  run<T>(req: GenerateRequest, read: (events: AsyncIterable<GenerateEvent>) => Promise<T>): Promise<T> {
    const result = (async () => read(tracked(this.svc, req, this.svc.engine.generate(req, { signal: this.signal }))))();
    result.catch(this.abort);
    this.runs.push(result);
    return result;
  }

  /**
   * Posts a run and collects it; `onEvent` sees each event as it comes. With `released`, a
   * token's text is what it released (held back while a stop string may start), as a stream
   * sends it; else its own text.
   */
  collect(
    req: GenerateRequest,
    onEvent?: (e: GenerateEvent, token?: ApiToken) => Promise<void>,
    released = false,
  ): Promise<Collected> {
    return this.run(req, async (events) => {
      const tokens: ApiToken[] = [];
      let done: DoneEvent | undefined;
      for await (const e of events) {
        let token: ApiToken | undefined;
        if (e.type === 'token' && e.id >= 0) {
          token = apiToken(this.svc, e, released ? e.text : undefined);
          tokens.push(token);
        }
        if (e.type === 'done') done = e;
        await onEvent?.(e, token);
      }
      return { tokens, done: done! };
    });
  }

  /** The runs' results, once all have ended; 504 when the time limit cut them short. */
  async all<T>(runs: Promise<T>[]): Promise<T[]> {
    const got = await Promise.all(runs);
    this.checkTime();
    return got;
  }

  /** 504 once the time limit has passed (the runs were cancelled). */
  checkTime(): void {
    if (this.timedOut) throw timeoutError(this.svc);
  }

  /**
   * Runs the request's handler: on a failure every run is aborted and awaited before the error
   * goes on; either way the request's hold on the server (admission, listeners, timer) ends once.
   */
  async serve<T>(handler: () => Promise<T>): Promise<T> {
    try {
      return await handler();
    } catch (e) {
      this.abort();
      await Promise.allSettled(this.runs);
      throw e;
    } finally {
      clearTimeout(this.timer);
      this.reply.raw.off('close', this.onClose);
      this.svc.aborts.delete(this.abort);
      this.release();
    }
  }

  /**
   * Sends a server-sent event unless the client has gone: a write to a socket closed under it
   * may never call back, and the request must still end (and free its admission).
   */
  async send(message: SseMessage): Promise<void> {
    if (this.signal.aborted || !this.reply.sse?.isConnected) return;
    await Promise.race([this.reply.sse.send(message), this.gone]);
  }

  /** Starts the event stream when the body asks for one (and the request accepts it): kept alive, a client that goes aborts the runs. */
  openStream(asked: boolean | undefined): boolean {
    if (!asked || !this.reply.sse) return false;
    this.reply.sse.keepAlive();
    this.reply.sse.onClose(this.abort);
    return true;
  }

  /** Ends a stream: a last event (`done`, with what was not streamed already), then the stream closed. */
  async close(message: SseMessage): Promise<FastifyReply> {
    await this.send(message);
    this.reply.sse!.close();
    return this.reply;
  }
}
