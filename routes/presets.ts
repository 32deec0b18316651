import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { makePreset } from '../src/api/presets.js';
import { errorResponses, interventionSchema, Nullable, presetInterventionSchema, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { NAME_PATTERN } from '../src/config.js';
import { BadRequestError } from '../src/errors.js';
import { presetMeta } from '../src/store/presets.js';

const presetSchema = Type.Partial(
  Type.Object({
    name: Type.String({ description: 'the preset, and the model id that applies it' }),
    description: Nullable(Type.String()),
    parent: Type.String({ description: 'the base model it steers' }),
    interventions: Type.Array(presetInterventionSchema),
    created_at: Type.String({ format: 'date-time' }),
  }),
  { $id: 'Preset' },
);

const name = Type.String({ pattern: NAME_PATTERN });
const fields = {
  description: Type.Optional(Type.String({ maxLength: 1000 })),
  interventions: Type.Array(Ref(interventionSchema), {
    minItems: 1,
    description: "as `/v1/generate`'s `interventions`: each vector by name, inline values or content hash",
  }),
};
const bodySchema = Type.Object({ name, ...fields }, { additionalProperties: false });
const putBodySchema = Type.Object({ name: Type.Optional(name), ...fields }, { additionalProperties: false });
const nameParam = Type.Object({ name });

const description =
  'A preset is a named list of interventions (the shape `/v1/generate` takes) served as a model id: `model: "<preset>"` in `/v1/completions`, `/v1/generate` and `/v1/sweep` applies them first (a request may add its own), and `GET /v1/models` lists it. It is checked against the model when made (a vector that is missing or does not fit, a layer or site out of range: 422 naming the field; nothing is stored). Its vectors are pinned by content hash: the preset keeps the values it was made with, so deleting or replacing a vector it was made from changes nothing about it (PUT replaces the preset itself). Receipts name the preset and its interventions by hash, and replay after it changes or goes. Presets are kept per model: in a registry shared by servers of different models, each sees, replaces and deletes its own model\'s only (another model\'s is a 404 here, and its name is free here).';

const presetRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.addSchema(presetSchema);
  const preset = Ref(presetSchema);
  const shown = (p: Parameters<typeof presetMeta>[0]) => {
    const { model: _m, ...rest } = presetMeta(p);
    return { ...rest, parent: svc.model.name };
  };
  const max = () => svc.config.limits.maxVectors;

  app.post(
    '/v1/presets',
    {
      schema: {
        tags: ['presets'],
        summary: 'Make a preset: named steering served as a model id',
        description,
        body: bodySchema,
        response: { 201: preset, ...errorResponses },
      },
    },
    async (request, reply) => {
      const p = await makePreset(svc, request.body.name, request.body);
      await svc.store.putPreset(p, { replace: false, max: max() });
      reply.code(201);
      return shown(p);
    },
  );

  app.put(
    '/v1/presets/:name',
    {
      schema: {
        tags: ['presets'],
        summary: 'Create or replace a preset',
        params: nameParam,
        body: putBodySchema,
        response: { 200: preset, ...errorResponses },
      },
    },
    async (request) => {
      if (request.body.name !== undefined && request.body.name !== request.params.name)
        throw new BadRequestError(`body name "${request.body.name}" differs from the path's "${request.params.name}"`);
      const p = await makePreset(svc, request.params.name, request.body);
      await svc.store.putPreset(p, { replace: true, max: max() });
      return shown(p);
    },
  );

  app.get(
    '/v1/presets',
    {
      schema: {
        tags: ['presets'],
        summary: "List this model's presets",
        response: { 200: Type.Partial(Type.Object({ data: Type.Array(preset) })), ...errorResponses },
      },
    },
    async () => ({
      data: (await svc.store.listPresets(svc.model.id)).map(shown),
    }),
  );

  app.get(
    '/v1/presets/:name',
    {
      schema: {
        tags: ['presets'],
        summary: 'One preset',
        params: nameParam,
        response: { 200: preset, ...errorResponses },
      },
    },
    async (request) => {
      return shown(await svc.store.getPreset(svc.model.id, request.params.name));
    },
  );

  app.delete(
    '/v1/presets/:name',
    {
      schema: {
        tags: ['presets'],
        summary: 'Delete a preset (receipts that name it still replay)',
        params: nameParam,
        response: { 204: Type.Null({ description: 'deleted' }), ...errorResponses },
      },
    },
    async (request, reply) => {
      await svc.store.deletePreset(svc.model.id, request.params.name);
      reply.code(204);
    },
  );
};

export default presetRoutes;
