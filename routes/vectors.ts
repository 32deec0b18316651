import type { FastifyInstance } from 'fastify';
import { admit } from '../src/api/generation.js';
import { toFloat32 } from '../src/api/resolve.js';
import { vectorValuesSchema } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { NAME_PATTERN } from '../src/config.js';
import { deriveVector, normalizeRows, type Recipe } from '../src/engine/recipes.js';
import { BadRequestError, UnprocessableError } from '../src/errors.js';
import { describe, type StoredVector } from '../src/store/vectors.js';

interface VectorBody {
  name: string;
  values?: number[] | number[][];
  recipe?: Recipe;
  layer?: number;
  normalize?: boolean;
  description?: string;
}

const metaSchema = {
  $id: 'Vector',
  type: 'object',
  properties: {
    name: { type: 'string' },
    kind: { type: 'string', enum: ['direction', 'sequence'] },
    shape: { type: 'array', items: { type: 'integer' } },
    layer: { type: ['integer', 'null'] },
    norm: { type: 'number' },
    hash: { type: 'string', description: 'sha256 of the shape and float32 values' },
    recipe: { description: 'how the vector was made, or "uploaded"' },
    model: { type: 'object', properties: { id: { type: 'string' }, n_embd: { type: 'integer' } } },
    description: { type: ['string', 'null'] },
    created_at: { type: 'string', format: 'date-time' },
    values: { description: 'with ?values=true: number[H] or number[k][H]' },
  },
} as const;

const recipeSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['kind', 'layer'],
  properties: {
    kind: { type: 'string', enum: ['diff', 'actadd', 'mean_diff'] },
    layer: { type: 'integer', minimum: 0 },
    positive: { type: 'string', minLength: 1 },
    negative: { type: 'string', minLength: 1 },
    pairs: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      items: { type: 'array', items: { type: 'string', minLength: 1 }, minItems: 2, maxItems: 2 },
    },
    normalize: { type: 'boolean', default: false },
  },
} as const;

const bodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name: { type: 'string', pattern: NAME_PATTERN },
    values: vectorValuesSchema,
    recipe: recipeSchema,
    layer: { type: 'integer', minimum: 0, description: 'suggested hook point, kept with the vector' },
    normalize: { type: 'boolean', default: false, description: 'scale to unit norm (a sequence: each row)' },
    description: { type: 'string', maxLength: 1000 },
  },
  oneOf: [{ required: ['values'] }, { required: ['recipe'] }],
} as const;

const errors = { '4xx': { $ref: 'Error#' }, '5xx': { $ref: 'Error#' } } as const;
const nameParam = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', pattern: NAME_PATTERN } },
} as const;

function shaped(v: StoredVector): number[] | number[][] {
  const values = Array.from(v.values);
  if (v.shape.length === 1) return values;
  const H = v.shape[1];
  return Array.from({ length: v.shape[0] }, (_, r) => values.slice(r * H, (r + 1) * H));
}

const meta = ({ values: _, ...m }: StoredVector) => m;

export default async function vectorRoutes(app: FastifyInstance, { svc }: { svc: Service }) {
  app.addSchema(metaSchema);

  async function make(b: VectorBody): Promise<StoredVector> {
    const H = svc.engine.info.n_embd;
    if (b.layer !== undefined && b.layer > svc.engine.info.n_layer) {
      throw new UnprocessableError(
        `layer ${b.layer} is out of range: this model's hook points are 0..${svc.engine.info.n_layer}`,
      );
    }
    let values: Float32Array;
    let shape: number[];
    let recipe: unknown = 'uploaded';
    let layer = b.layer ?? null;
    if (b.recipe) {
      const r = b.recipe;
      if (r.kind !== 'mean_diff' && (!r.positive || !r.negative))
        throw new BadRequestError(`recipe ${r.kind} needs positive and negative prompts`);
      if (r.kind === 'mean_diff' && !r.pairs) throw new BadRequestError('recipe mean_diff needs pairs');
      const release = admit(svc);
      try {
        const d = await deriveVector(svc.engine, r);
        values = d.values;
        shape = d.rows === 1 ? [H] : [d.rows, H];
      } finally {
        release();
      }
      recipe = r;
      layer = r.layer;
    } else {
      ({ values, shape } = toFloat32(b.values!, 'values'));
      if (shape.at(-1) !== H) {
        throw new UnprocessableError(`vector width ${shape.at(-1)} does not match this model's hidden size ${H}`, {
          n_embd: H,
        });
      }
      for (const v of values) if (!Number.isFinite(v)) throw new BadRequestError('vector values must be finite');
      if (b.normalize) values = Float32Array.from(normalizeRows(Float64Array.from(values), H));
    }
    return {
      name: b.name,
      ...describe(values, shape),
      layer,
      recipe,
      model: { id: svc.model.id, n_embd: H },
      description: b.description ?? null,
      created_at: new Date().toISOString(),
      values,
    };
  }

  app.post<{ Body: VectorBody }>(
    '/v1/vectors',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Register a steering vector, from values or from a recipe',
        description:
          "Recipes read the model's own activations at `recipe.layer`: `diff` (last token of positive minus negative), `actadd` (per-position difference, BOS prepended, the shorter padded with spaces: a sequence), `mean_diff` (mean last-token difference over pairs).",
        body: bodySchema,
        response: { 201: { $ref: 'Vector#' }, ...errors },
      },
    },
    async (request, reply) => {
      const v = await make(request.body);
      await svc.store.put(v, { replace: false, max: svc.config.limits.maxVectors });
      reply.code(201);
      return meta(v);
    },
  );

  app.put<{ Body: Omit<VectorBody, 'name'> & { name?: string }; Params: { name: string } }>(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Create or replace a steering vector',
        params: nameParam,
        body: { ...bodySchema, required: [] },
        response: { 200: { $ref: 'Vector#' }, ...errors },
      },
    },
    async (request, _reply) => {
      if (request.body.name !== undefined && request.body.name !== request.params.name) {
        throw new BadRequestError(`body name "${request.body.name}" differs from the path's "${request.params.name}"`);
      }
      const v = await make({ ...request.body, name: request.params.name });
      await svc.store.put(v, { replace: true, max: svc.config.limits.maxVectors });
      return meta(v);
    },
  );

  app.get(
    '/v1/vectors',
    {
      schema: {
        tags: ['vectors'],
        summary: 'List stored vectors',
        response: {
          200: { type: 'object', properties: { data: { type: 'array', items: { $ref: 'Vector#' } } } },
          ...errors,
        },
      },
    },
    async () => ({ data: await svc.store.list() }),
  );

  app.get<{ Params: { name: string }; Querystring: { values?: string } }>(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'One stored vector (with ?values=true, its values)',
        params: nameParam,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { values: { type: 'string', enum: ['true', 'false'] } },
        },
        response: { 200: { $ref: 'Vector#' }, ...errors },
      },
    },
    async (request) => {
      const v = await svc.store.get(request.params.name);
      return request.query.values === 'true' ? { ...meta(v), values: shaped(v) } : meta(v);
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Delete a stored vector',
        params: nameParam,
        response: { 204: { type: 'null', description: 'deleted' }, ...errors },
      },
    },
    async (request, reply) => {
      await svc.store.delete(request.params.name);
      reply.code(204);
    },
  );
}
