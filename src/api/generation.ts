import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type {
  FastifyReply,
  FastifyRequest,
  FastifySchema,
  RawRequestDefaultExpression,
  RawServerDefault,
  RouteGenericInterface,
} from 'fastify';
import type { GenerateEvent, GenerateRequest } from '../engine/types.js';
import { QueueFullError, SteerdError, UnavailableError, UnprocessableError } from '../errors.js';
import type { Service } from './service.js';

/** The request of a route whose `schema` is written with TypeBox: body, params and query typed from it. */
export type SchemaRequest<S extends FastifySchema> = FastifyRequest<
  RouteGenericInterface,
  RawServerDefault,
  RawRequestDefaultExpression,
  S,
  TypeBoxTypeProvider
>;

/**
 * Refuses what this server can never admit, `n` generations at once beyond the queue depth, with
 * 422 naming the limit (`what` names the request's part that asks for them): waiting would not help.
 */
export function checkAdmissible(svc: Service, n: number, what = 'this request'): void {
  const depth = svc.config.limits.queueDepth;
  if (n > depth)
    throw new UnprocessableError(
      `${what} needs ${n} generations at once; this server admits at most ${depth} (STEERD_QUEUE_DEPTH)`,
      { needed: n, queue_depth: depth },
    );
}

/**
 * Refuses new work while draining (503), work that can never be admitted (422) and work that does
 * not fit now (429, retry later), else counts it in: `n` generations (a request with control arms,
 * or a sweep's cells, counts each). The returned release counts it out, once however often called.
 */
export function admit(svc: Service, n = 1): () => void {
  if (svc.draining) throw new UnavailableError('the server is shutting down');
  checkAdmissible(svc, n);
  const depth = svc.config.limits.queueDepth;
  if (svc.inFlight + n > depth) {
    throw new QueueFullError(
      `the queue is full (${svc.inFlight} of ${depth} generations in flight; this request needs ${n}); retry later`,
      depth,
    );
  }
  svc.inFlight += n;
  let released = false;
  return () => {
    if (!released) svc.inFlight -= n;
    released = true;
  };
}

/**
 * Wraps a handler that may stream: an error before the stream starts goes to the error handler as
 * usual; once events have been sent, it becomes the stream's last event (`error`, same body).
 * A handler that has streamed returns `reply` (to Fastify: the response is sent); the route's types,
 * made from its response schemas, know no such body, so to them it is no body (`undefined`).
 */
export function streamErrors<R extends FastifyRequest, P extends FastifyReply, T>(
  handler: (request: R, reply: P) => Promise<T | P>,
) {
  return async (request: R, reply: P): Promise<T | undefined> => {
    try {
      return (await handler(request, reply)) as T | undefined;
    } catch (e) {
      if (!reply.raw.headersSent) throw e;
      const err = e instanceof SteerdError ? e : new SteerdError('internal error', 500, 'internal');
      if (!(e instanceof SteerdError)) request.log.error({ err: e }, 'stream failed');
      if (reply.sse?.isConnected)
        await reply.sse.send({ event: 'error', data: { error: { code: err.code, message: err.message } } });
      reply.sse?.close();
      return reply as unknown as undefined;
    }
  };
}

export function checkLimits(svc: Service, maxNew: number): void {
  const lim = svc.config.limits.maxNewTokens;
  if (maxNew > lim) throw new UnprocessableError(`max_new_tokens (${maxNew}) exceeds this server's limit (${lim})`);
}

/** The engine's events for a request, with the request's metrics recorded on the way. */
export async function* tracked(
  svc: Service,
  req: GenerateRequest,
  events: AsyncIterable<GenerateEvent>,
): AsyncGenerator<GenerateEvent> {
  const m = svc.metrics;
  const t0 = performance.now();
  let last = 0;
  let running = false;
  m.waiting.inc();
  m.promptTokens.inc(req.prompt.length);
  try {
    for await (const e of events) {
      if (e.type === 'token' && e.id >= 0) {
        const now = performance.now();
        if (!running) {
          running = true;
          m.waiting.dec();
          m.running.inc();
          m.ttft.observe((now - t0) / 1000);
        } else {
          m.itl.observe((now - last) / 1000);
        }
        last = now;
        m.generationTokens.inc();
      } else if (e.type === 'done') {
        m.requests.inc({ finished_reason: e.finish_reason });
        m.e2e.observe(e.timings.total_ms / 1000);
        m.queue.observe(e.timings.queue_ms / 1000);
        m.batch.observe(Math.max(1, svc.inFlight));
      }
      yield e;
    }
  } finally {
    if (running) m.running.dec();
    else m.waiting.dec();
  }
}
