import type { FastifyReply, FastifyRequest } from 'fastify';
import { SteerdError, UnavailableError, UnprocessableError } from '../errors.js';
import type { GenerateEvent, GenerateRequest } from '../engine/types.js';
import type { Service } from './service.js';

/** Refuses new work while draining (503) or when the queue is full (429), else counts it in. */
export function admit(svc: Service, reply: FastifyReply): () => void {
  if (svc.draining) throw new UnavailableError('the server is shutting down');
  const depth = svc.config.limits.queueDepth;
  if (svc.inFlight >= depth) {
    reply.header('retry-after', '1');
    throw new SteerdError(`the queue is full (${depth} requests in flight); retry later`, 429, 'queue_full', { queue_depth: depth });
  }
  svc.inFlight++;
  let released = false;
  return () => {
    if (!released) svc.inFlight--;
    released = true;
  };
}

/**
 * An AbortSignal that fires when the client goes away before the response is complete, or when
 * the request's time limit passes (then `timedOut()` is true).
 */
export function requestSignal(svc: Service, request: FastifyRequest, reply: FastifyReply) {
  const ac = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, svc.config.limits.requestTimeoutMs);
  const onClose = () => {
    if (!reply.raw.writableFinished) ac.abort();
  };
  reply.raw.on('close', onClose);
  // the client may have gone while the body was parsed and the request validated
  if (reply.raw.destroyed || request.raw.socket?.destroyed) ac.abort();
  return {
    signal: ac.signal,
    abort: () => ac.abort(),
    timedOut: () => timedOut,
    done() {
      clearTimeout(timer);
      reply.raw.off('close', onClose);
    },
  };
}

export function checkLimits(svc: Service, maxNew: number): void {
  const lim = svc.config.limits.maxNewTokens;
  if (maxNew > lim) throw new UnprocessableError(`max_new_tokens (${maxNew}) exceeds this server's limit (${lim})`);
}

/** The engine's events for a request, with the request's metrics recorded on the way. */
export async function* tracked(svc: Service, req: GenerateRequest, events: AsyncIterable<GenerateEvent>): AsyncGenerator<GenerateEvent> {
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
