import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { errorSchema, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { UnavailableError } from '../src/errors.js';

const status = Type.Partial(Type.Object({ status: Type.String() }));

const healthRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.get(
    '/healthz',
    {
      schema: {
        tags: ['health'],
        summary: 'Alive',
        response: { 200: status },
      },
    },
    async () => ({
      status: 'ok',
    }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        tags: ['health'],
        summary: 'Ready to serve: model loaded, vector registry reachable, not draining',
        response: { 200: status, 503: Ref(errorSchema) },
      },
    },
    async () => {
      if (svc.draining) throw new UnavailableError('the server is shutting down');
      if (!svc.engine.ready)
        throw new UnavailableError('the engine is not running (Redis mode: the queue is not connected)');
      if (svc.store.ping && !(await svc.store.ping()))
        throw new UnavailableError('the vector registry (Redis) is unreachable');
      return { status: 'ready' };
    },
  );

  app.get(
    '/metrics',
    { schema: { tags: ['health'], summary: 'Prometheus metrics', produces: ['text/plain'] } },
    async (_req, reply) => {
      reply.type(svc.metrics.registry.contentType);
      return svc.metrics.registry.metrics();
    },
  );
};

export default healthRoutes;
