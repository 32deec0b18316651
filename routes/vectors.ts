import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { type Static, Type } from 'typebox';
import { admit } from '../src/api/generation.js';
import { toFloat32 } from '../src/api/resolve.js';
import {
  type Agrees,
  errorResponses,
  Nullable,
  Ref,
  type Same,
  StringEnum,
  vectorValuesSchema,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { NAME_PATTERN } from '../src/config.js';
import { deriveVector, normalizeRows, type Recipe } from '../src/engine/recipes.js';
import { BadRequestError, UnprocessableError } from '../src/errors.js';
import { describe, type StoredVector } from '../src/store/vectors.js';

const metaSchema = Type.Partial(
  Type.Object({
    name: Type.String(),
    kind: StringEnum(['direction', 'sequence']),
    shape: Type.Array(Type.Integer()),
    layer: Nullable(Type.Integer()),
    norm: Type.Number(),
    hash: Type.String({ description: 'sha256 of the shape and float32 values' }),
    recipe: Type.Unknown({ description: 'how the vector was made, or "uploaded"' }),
    model: Type.Partial(Type.Object({ id: Type.String(), n_embd: Type.Integer() })),
    description: Nullable(Type.String()),
    created_at: Type.String({ format: 'date-time' }),
    values: Type.Unknown({ description: 'with ?values=true: number[H] or number[k][H]' }),
  }),
  { $id: 'Vector' },
);

const prompt = Type.String({ minLength: 1 });
const recipeSchema = Type.Object(
  {
    kind: StringEnum(['diff', 'actadd', 'mean_diff']),
    layer: Type.Integer({ minimum: 0 }),
    positive: Type.Optional(prompt),
    negative: Type.Optional(prompt),
    pairs: Type.Optional(
      Type.Array(Type.Unsafe<[string, string]>(Type.Array(prompt, { minItems: 2, maxItems: 2 })), {
        minItems: 1,
        maxItems: 256,
      }),
    ),
    normalize: Type.Optional(Type.Boolean({ default: false })),
  },
  { additionalProperties: false },
);
type _Recipe = Agrees<Same<Static<typeof recipeSchema>, Recipe>>;

const name = Type.String({ pattern: NAME_PATTERN });
const vectorFields = {
  values: Type.Optional(vectorValuesSchema),
  recipe: Type.Optional(recipeSchema),
  layer: Type.Optional(Type.Integer({ minimum: 0, description: 'suggested hook point, kept with the vector' })),
  normalize: Type.Optional(Type.Boolean({ default: false, description: 'scale to unit norm (a sequence: each row)' })),
  description: Type.Optional(Type.String({ maxLength: 1000 })),
};
/** A vector comes from values or from a recipe, never both. */
const bodyOptions = { additionalProperties: false, oneOf: [{ required: ['values'] }, { required: ['recipe'] }] };
const bodySchema = Type.Object({ name, ...vectorFields }, bodyOptions);
/** PUT names the vector in its path; the body may repeat the name. */
const putBodySchema = Type.Object({ name: Type.Optional(name), ...vectorFields }, bodyOptions);
type VectorBody = Static<typeof bodySchema>;

const vector = Ref(metaSchema);
const nameParam = Type.Object({ name });

function shaped(v: StoredVector): number[] | number[][] {
  const values = Array.from(v.values);
  if (v.shape.length === 1) return values;
  const H = v.shape[1];
  return Array.from({ length: v.shape[0] }, (_, r) => values.slice(r * H, (r + 1) * H));
}

const meta = ({ values: _, ...m }: StoredVector) => m;

const vectorRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
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

  app.post(
    '/v1/vectors',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Register a steering vector, from values or from a recipe',
        description:
          "Recipes read the model's own activations at `recipe.layer`: `diff` (last token of positive minus negative), `actadd` (per-position difference, BOS prepended, the shorter padded with spaces: a sequence), `mean_diff` (mean last-token difference over pairs).",
        body: bodySchema,
        response: { 201: vector, ...errorResponses },
      },
    },
    async (request, reply) => {
      const v = await make(request.body);
      await svc.store.put(v, { replace: false, max: svc.config.limits.maxVectors });
      reply.code(201);
      return meta(v);
    },
  );

  app.put(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Create or replace a steering vector',
        params: nameParam,
        body: putBodySchema,
        response: { 200: vector, ...errorResponses },
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
          200: Type.Partial(Type.Object({ data: Type.Array(vector) })),
          ...errorResponses,
        },
      },
    },
    async () => ({ data: await svc.store.list() }),
  );

  app.get(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'One stored vector (with ?values=true, its values)',
        params: nameParam,
        querystring: Type.Object(
          { values: Type.Optional(StringEnum(['true', 'false'])) },
          { additionalProperties: false },
        ),
        response: { 200: vector, ...errorResponses },
      },
    },
    async (request) => {
      const v = await svc.store.get(request.params.name);
      return request.query.values === 'true' ? { ...meta(v), values: shaped(v) } : meta(v);
    },
  );

  app.delete(
    '/v1/vectors/:name',
    {
      schema: {
        tags: ['vectors'],
        summary: 'Delete a stored vector',
        params: nameParam,
        response: { 204: Type.Null({ description: 'deleted' }), ...errorResponses },
      },
    },
    async (request, reply) => {
      await svc.store.delete(request.params.name);
      reply.code(204);
    },
  );
};

export default vectorRoutes;
