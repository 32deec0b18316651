import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import rateLimit from '@fastify/rate-limit';
import { fastifySSE as sse } from '@fastify/sse';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
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

function keyMatches(given: string, keys: string[]): boolean {
  const g = Buffer.from(given);
  return keys.some((k) => {
    const b = Buffer.from(k);
    return b.length === g.length && timingSafeEqual(b, g);
  });
}

const bearer = (h: string | undefined) => (h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined);

/** Whether a request matched a /v1 route: decided by the router, so percent-escapes cannot dodge it. */
const isApi = (request: FastifyRequest) => request.routeOptions.url?.startsWith('/v1/') === true;

/**
 * Builds the HTTP app around a running service: plugins and routes registered explicitly, never
 * listening (server.ts listens; tests use `inject`).
 */
export async function buildApp(svc: Service, opts: AppOptions = {}): Promise<FastifyInstance> {
  const { config } = svc;
  const app = Fastify({
    logger:
      opts.logger === false
        ? false
        : { ...logOptions(config), ...(typeof opts.logger === 'object' ? opts.logger : {}) },
    bodyLimit: config.limits.bodyLimit,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    return503OnClosing: false, // while closing, our own hooks answer 503 in the documented shape
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
  });

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
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/openapi.yaml', { schema: { hide: true } }, async (_req, reply) =>
    reply.type('application/yaml').send(app.swagger({ yaml: true })),
  );

  await app.register(sse, { serializer: (d: unknown) => (typeof d === 'string' ? d : JSON.stringify(d)) });

  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err instanceof QueueFullError) reply.header('retry-after', String(err.retryAfter));
    if (err instanceof SteerdError) return reply.status(err.status).send(errorBody(err.code, err.message, err.details));
    if (err.validation) {
      const v = err.validation[0];
      const where = `${err.validationContext ?? 'body'}${v?.instancePath ?? ''}`;
      return reply
        .status(400)
        .send(errorBody('invalid_request', `${where} ${v?.message ?? 'is invalid'}`, { errors: err.validation }));
    }
    const status = err.statusCode ?? 500;
    if (status === 413)
      return reply
        .status(413)
        .send(errorBody('too_large', `the body exceeds the limit of ${config.limits.bodyLimit} bytes`));
    if (status === 415) return reply.status(415).send(errorBody('unsupported_media_type', err.message));
    if (status >= 400 && status < 500) return reply.status(status).send(errorBody('invalid_request', err.message));
    request.log.error({ err }, 'request failed');
    return reply.status(500).send(errorBody('internal', 'internal error'));
  });
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send(errorBody('not_found', `no route ${request.method} ${request.url.split('?')[0]}`)),
  );

  if (config.apiKeys.length) {
    app.addHook('onRequest', async (request, reply) => {
      if (!isApi(request)) return;
      const key = bearer(request.headers.authorization);
      if (!key || !keyMatches(key, config.apiKeys)) {
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
