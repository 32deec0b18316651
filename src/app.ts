import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { maxHeaderSize, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import rateLimit from '@fastify/rate-limit';
import { fastifySSE as sse } from '@fastify/sse';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import activationRoutes from '../routes/activations.js';
import completionRoutes from '../routes/completions.js';
import generateRoutes from '../routes/generate.js';
import healthRoutes from '../routes/health.js';
import modelRoutes from '../routes/model.js';
import playgroundRoutes from '../routes/playground.js';
import presetRoutes from '../routes/presets.js';
import replayRoutes from '../routes/replay.js';
import sweepRoutes from '../routes/sweep.js';
import vectorRoutes from '../routes/vectors.js';
import { receiptSchema } from './api/receipt.js';
import { errorSchema, interventionSchema } from './api/schemas.js';
import type { Service } from './api/service.js';
import { explain, plainError, type SchemaError } from './api/validation.js';
import { type Config, hostAllowlist, hostName, isAddress } from './config.js';
import { QueueFullError, SteerdError } from './errors.js';
import { logOptions } from './logging.js';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

export interface AppOptions {
  /** pino options, or false for no logging (tests). Default: the service's log level. */
  logger?: boolean | Record<string, unknown>;
}

const errorBody = (code: string, message: string, details?: unknown) => ({
  error: { code, message, ...(details ? { details } : {}) },
});

const digest = (key: string) => createHash('sha256').update(key).digest();

/**
 * Whether a key is one of `keys` (their SHA-256 digests): digests of the same length compared in
 * constant time, with every key, so that the time taken tells nothing of a key's length or which
 * one matched.
 */
function keyMatches(given: string, keys: Buffer[]): boolean {
  const g = digest(given);
  let found = false;
  for (const k of keys) found = timingSafeEqual(k, g) || found;
  return found;
}

/** The credentials of an `Authorization: Bearer …` header; the scheme is case-insensitive (RFC 9110). */
const bearer = (h: string | undefined) => /^bearer[ \t]+(.+)$/i.exec(h?.trim() ?? '')?.[1].trim();

/**
 * Every response's security headers: a page may load scripts, styles, images and data only from
 * this server (the playground and the docs have no inline code), and may not be framed; types are
 * not sniffed; no Referer leaves the page.
 */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/**
 * The error of a request Node's HTTP parser refused or timed out (the server's `clientError`):
 * these never reach a route, so the raw answer is written here, in the same shape.
 */
function clientError(
  err: { message: string; code?: string; reason?: string },
  limits: Config['limits'],
  headersTimeoutMs: number,
) {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new SteerdError(
        `the request did not arrive in time: its headers are due within ${headersTimeoutMs} ms, all of it within ${limits.bodyTimeoutMs} ms`,
        408,
        'request_timeout',
      );
    case 'HPE_HEADER_OVERFLOW':
      // the parser sees only the chunk that overflowed, not whether the URL or a header did it
      return new SteerdError(
        `the request line and headers exceed ${maxHeaderSize} bytes (a long URL counts toward them)`,
        431,
        'headers_too_large',
      );
    default:
      return new SteerdError(`malformed HTTP request: ${err.reason ?? err.message}`, 400, 'invalid_request');
  }
}

/** Whether a request matched a /v1 route: decided by the router, so percent-escapes cannot dodge it. */
const isApi = (request: FastifyRequest) => request.routeOptions.url?.startsWith('/v1/') === true;

/**
 * Builds the HTTP app around a running service: plugins and routes registered explicitly, never
 * listening (server.ts listens; tests use `inject`).
 */
export async function buildApp(svc: Service, opts: AppOptions = {}): Promise<FastifyInstance> {
  const { config } = svc;
  const { limits } = config;
  // the headers are part of the request: never allowed longer than all of it
  const headersTimeoutMs = Math.min(limits.headersTimeoutMs, limits.bodyTimeoutMs);
  const app = Fastify({
    logger:
      opts.logger === false
        ? false
        : { ...logOptions(config), ...(typeof opts.logger === 'object' ? opts.logger : {}) },
    bodyLimit: config.limits.bodyLimit,
    // slow clients: Node bounds receiving a request (headers, then all of it; never the response),
    // checked this often; an idle kept-alive connection is closed after keepAliveTimeout
    requestTimeout: limits.bodyTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    http: {
      headersTimeout: headersTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, Math.ceil(headersTimeoutMs / 4)),
      // an HTTP/1.1 request without Host is refused by our own hook, in the documented shape
      requireHostHeader: false,
    },
    clientErrorHandler(err, socket) {
      if ((err as { code?: string }).code === 'ECONNRESET' || socket.destroyed) return;
      const e = clientError(err, limits, headersTimeoutMs);
      const body = JSON.stringify(errorBody(e.code, e.message));
      const inFlight = (socket as Socket & { _httpMessage?: { headersSent: boolean } })._httpMessage;
      if (socket.writable && !inFlight?.headersSent)
        socket.write(
          `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n${body}`,
        );
      socket.destroy(err);
    },
    // a URL the router cannot decode: the error handler's answer
    frameworkErrors: (err, request, reply) =>
      handleError(new SteerdError(err.message, 400, 'invalid_request'), request, reply as FastifyReply),
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    return503OnClosing: false, // while closing, our own hooks answer 503 in the documented shape
    // verbose: errors carry their schema, which names a union's alternatives and an object's properties
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false, verbose: true } },
  });
  // JSON only: a body sent as text/plain gets 415 naming its type, not a schema error about a string
  app.removeContentTypeParser('text/plain');

  app.addSchema(errorSchema);
  app.addSchema(interventionSchema);
  app.addSchema(receiptSchema);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'steerd',
        version: pkg.version,
        description:
          'Activation steering for GPT-2 over HTTP: read the residual stream, register steering vectors, generate with interventions.',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'only when the server has API keys' },
        },
      },
      tags: ['vectors', 'presets', 'generation', 'activations', 'openai', 'model', 'health'].map((name) => ({ name })),
    },
    refResolver: { buildLocalReference: (json, _base, _frag, i) => (json.$id as string) ?? `def-${i}` },
  });
  // BaseLayout: no top bar, whose logo is an SVG with an inline style sheet the CSP refuses
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { layout: 'BaseLayout' } });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/openapi.yaml', { schema: { hide: true } }, async (_req, reply) =>
    reply.type('application/yaml').send(app.swagger({ yaml: true })),
  );

  await app.register(sse, { serializer: (d: unknown) => (typeof d === 'string' ? d : JSON.stringify(d)) });

  /** The one error handler: every error a route, a hook or the router raises, in the documented shape. */
  function handleError(err: FastifyError | SteerdError, request: FastifyRequest, reply: FastifyReply) {
    reply.headers(SECURITY_HEADERS); // errors raised before the hooks ran (the router's) too
    if (err instanceof QueueFullError) reply.header('retry-after', String(err.retryAfter));
    if (err instanceof SteerdError) return reply.status(err.status).send(errorBody(err.code, err.message, err.details));
    if (err.validation) {
      const errors = err.validation as SchemaError[];
      return reply.status(400).send(
        errorBody('invalid_request', explain(errors, err.validationContext), {
          errors: errors.map(plainError),
        }),
      );
    }
    const status = err.statusCode ?? 500;
    if (status === 413)
      return reply
        .status(413)
        .send(errorBody('too_large', `the body exceeds the limit of ${config.limits.bodyLimit} bytes`));
    if (status === 415)
      return reply
        .status(415)
        .send(
          errorBody(
            'unsupported_media_type',
            `the body must be JSON, sent as application/json (got content-type ${request.headers['content-type'] ?? 'none'})`,
          ),
        );
    if (status >= 400 && status < 500) return reply.status(status).send(errorBody('invalid_request', err.message));
    request.log.error({ err }, 'request failed');
    return reply.status(500).send(errorBody('internal', 'internal error'));
  }
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send(errorBody('not_found', `no route ${request.method} ${request.url.split('?')[0]}`)),
  );

  app.addHook('onRequest', async (request, reply) => {
    reply.headers(SECURITY_HEADERS);
    if (request.headers.host === undefined && request.raw.httpVersion === '1.1')
      throw new SteerdError('an HTTP/1.1 request must carry a Host header', 400, 'invalid_request');
  });
  const hosts = hostAllowlist(config);
  if (hosts) {
    // DNS rebinding: a web page whose name now resolves to this machine sends its own name as Host
    app.addHook('onRequest', async (request) => {
      const host = request.headers.host;
      if (host === undefined) return;
      const name = hostName(host);
      if (!hosts.has(name) && !isAddress(name))
        throw new SteerdError(
          `this server does not answer to host ${JSON.stringify(host)} (STEERD_ALLOWED_HOSTS)`,
          403,
          'host_not_allowed',
        );
    });
  }
  if (config.apiKeys.length) {
    const keys = config.apiKeys.map(digest);
    app.addHook('onRequest', async (request, reply) => {
      if (!isApi(request)) return;
      const key = bearer(request.headers.authorization);
      if (!key || !keyMatches(key, keys)) {
        reply.header('www-authenticate', 'Bearer');
        throw new SteerdError('missing or unknown API key', 401, 'unauthorized');
      }
    });
  }
  if (config.rateLimit > 0) {
    await app.register(rateLimit, {
      max: config.rateLimit,
      timeWindow: 60_000,
      // Redis mode: one count per key across every API process; while Redis is away requests
      // pass here (and get 503 from the queue)
      ...(svc.redis && { redis: svc.redis, nameSpace: `${config.redisPrefix}ratelimit:`, skipOnError: true }),
      // keys are checked before this runs; without keys a bearer header is anyone's to invent.
      // A key is counted under its hash: the counters' names (Redis keys) must not reveal it.
      keyGenerator: (request) => {
        const key = config.apiKeys.length ? bearer(request.headers.authorization) : undefined;
        return key ? `key:${createHash('sha256').update(key).digest('hex').slice(0, 32)}` : request.ip;
      },
      allowList: (request) => !isApi(request),
      errorResponseBuilder: (_request, ctx) =>
        new SteerdError(
          `rate limit of ${ctx.max} requests per minute reached; retry in ${ctx.after}`,
          429,
          'rate_limited',
          { limit: ctx.max },
        ),
    });
  }
  app.addHook('onRequest', async (request) => {
    if (svc.draining && isApi(request)) throw new SteerdError('the server is shutting down', 503, 'unavailable');
  });
  app.addHook('onSend', async (_request, reply) => {
    if (svc.draining) reply.header('connection', 'close'); // let keep-alive clients go while draining
  });
  app.addHook('onResponse', async (request, reply) => {
    svc.metrics.http.inc({ route: request.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) });
  });

  await app.register(healthRoutes, { svc });
  await app.register(modelRoutes, { svc });
  await app.register(vectorRoutes, { svc });
  await app.register(presetRoutes, { svc });
  await app.register(generateRoutes, { svc });
  await app.register(sweepRoutes, { svc });
  await app.register(replayRoutes, { svc });
  await app.register(activationRoutes, { svc });
  await app.register(completionRoutes, { svc });
  await app.register(playgroundRoutes);
  return app;
}
