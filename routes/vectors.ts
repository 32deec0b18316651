import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { type Static, Type } from 'typebox';
import { diagnostics, registrationWarnings } from '../src/api/diagnostics.js';
import { admit } from '../src/api/generation.js';
import { toFloat32 } from '../src/api/resolve.js';
import {
  type Agrees,
  errorResponses,
  Nullable,
  Ref,
  type Same,
  StringEnum,
  siteSchema,
  vectorValuesSchema,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { NAME_PATTERN } from '../src/config.js';
import { deriveVector, normalizeRows, type Recipe } from '../src/engine/recipes.js';
import { BadRequestError, UnprocessableError } from '../src/errors.js';
import { maxLayer } from '../src/model/hooks.js';
import { describe } from '../src/store/content.js';
import type { StoredVector } from '../src/store/types.js';

const metaSchema = Type.Partial(
  Type.Object({
    name: Type.String(),
    kind: StringEnum(['direction', 'sequence']),
    shape: Type.Array(Type.Integer()),
    layer: Nullable(Type.Integer()),
    site: siteSchema,
    pair_consistency: Type.Number({
      description: "pair recipes: the mean cosine between each pair's difference and the mean difference",
    }),
    norm: Type.Number(),
    hash: Type.String({ description: 'sha256 of the shape and float32 values' }),
    recipe: Type.Unknown({ description: 'how the vector was made, or "uploaded"' }),
    model: Type.Partial(Type.Object({ id: Type.String(), n_embd: Type.Integer() })),
    description: Nullable(Type.String()),
    created_at: Type.String({ format: 'date-time' }),
    values: Type.Unknown({ description: 'with ?values=true: number[H] or number[k][H]' }),
    warnings: Type.Array(Type.String(), {
      description: 'on registration: what makes the vector unlikely to steer (e.g. mostly erased by LayerNorm)',
    }),
  }),
  { $id: 'Vector' },
);

const prompt = Type.String({ minLength: 1 });
const lensTokens = Type.Array(Type.Object({ id: Type.Integer(), text: Type.String(), score: Type.Number() }));
const recipeSchema = Type.Object(
  {
    kind: StringEnum(['diff', 'actadd', 'mean_diff', 'pca']),
    layer: Type.Integer({ minimum: 0 }),
    site: Type.Optional(siteSchema),
    positive: Type.Optional(prompt),
    negative: Type.Optional(prompt),
    pairs: Type.Optional(
      Type.Array(Type.Unsafe<[string, string]>(Type.Array(prompt, { minItems: 2, maxItems: 2 })), {
        minItems: 1,
        maxItems: 256,
      }),
    ),
    normalize: Type.Optional(Type.Boolean({ default: false })),
    center: Type.Optional(
      Type.Boolean({ default: false, description: 'pca: subtract the mean difference first (repeng)' }),
    ),
  },
  { additionalProperties: false },
);
type _Recipe = Agrees<Same<Static<typeof recipeSchema>, Recipe>>;

const name = Type.String({ pattern: NAME_PATTERN });
const vectorFields = {
  values: Type.Optional(vectorValuesSchema),
  recipe: Type.Optional(recipeSchema),
  layer: Type.Optional(Type.Integer({ minimum: 0, description: 'suggested hook point, kept with the vector' })),
  site: Type.Optional(siteSchema),
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

  /** A registration's answer: the vector, and what would make it steer poorly. */
  const withWarnings = (v: StoredVector) => {
    const warnings = registrationWarnings(v.values, svc.engine.info);
    return { ...meta(v), ...(warnings.length && { warnings }) };
  };

  app.get(
    '/v1/vectors/:name/diagnostics',
    {
      schema: {
        tags: ['vectors'],
        summary: 'What a vector is likely to do: LayerNorm-erased share, logit lens, similar vectors, pair consistency',
        description:
          "`ln_erased_fraction` = H·mean(v)²/‖v‖², the share along the all-ones direction that every LayerNorm removes (null for RMSNorm models, Llama's family, which remove nothing); `logit_lens` ranks tokens by W_U · ln_f(v) (ln_f with its weight and bias applied to v alone, then the unembedding); `similar`: up to 5 registered vectors of the same model and shape by |cosine|; `pair_consistency` (pair recipes): the mean cosine between each pair's difference and the mean difference. A sequence is reported as a whole: norm and erased share over all rows, the logit lens of the sum of its rows.",
        params: nameParam,
        response: {
          200: Type.Object({
            name: Type.String(),
            hash: Type.String(),
            shape: Type.Array(Type.Integer()),
            norm: Type.Number(),
            ln_erased_fraction: Nullable(Type.Number()),
            logit_lens: Type.Object({ top: lensTokens, bottom: lensTokens }),
            similar: Type.Array(Type.Object({ name: Type.String(), cosine: Type.Number() })),
            pair_consistency: Type.Optional(Type.Number()),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const release = admit(svc);
      try {
        return await diagnostics(svc, await svc.store.get(request.params.name));
      } finally {
        release();
      }
    },
  );

  async function make(b: VectorBody): Promise<StoredVector> {
    const H = svc.engine.info.n_embd;
    const site = b.recipe?.site ?? b.site ?? 'resid_pre';
    const top = maxLayer(site, svc.engine.info.n_layer);
    for (const l of [b.layer, b.recipe?.layer])
      if (l !== undefined && l > top)
        throw new UnprocessableError(`layer ${l} is out of range: this model's ${site} hook points are 0..${top}`);
    if (!svc.engine.info.hook_sites.includes(site))
      throw new UnprocessableError(`site ${site} is not enabled on this server (STEERD_HOOK_SITES)`);
    let values: Float32Array;
    let shape: number[];
    let recipe: unknown = 'uploaded';
    let layer = b.layer ?? null;
    let pair_consistency: number | undefined;
    if (b.recipe) {
      const r = b.recipe;
      if ((r.kind === 'diff' || r.kind === 'actadd') && (!r.positive || !r.negative))
        throw new BadRequestError(`recipe ${r.kind} needs positive and negative prompts`);
      if ((r.kind === 'mean_diff' || r.kind === 'pca') && !r.pairs)
        throw new BadRequestError(`recipe ${r.kind} needs pairs`);
      if (r.kind !== 'pca' && r.center) throw new BadRequestError('center is a pca option');
      const release = admit(svc);
      try {
        const d = await deriveVector(svc.engine, r);
        values = d.values;
        shape = d.rows === 1 ? [H] : [d.rows, H];
        pair_consistency = d.pair_consistency;
      } finally {
        release();
      }
      // `center` is pca's option (the schema's default gives every recipe one)
      recipe = r.kind === 'pca' ? r : { ...r, center: undefined };
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
      site,
      ...(pair_consistency !== undefined && { pair_consistency }),
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
          "Recipes read the model's own activations at `recipe.layer` and `recipe.site` (default resid_pre; the vector remembers it, and an intervention without a site uses it): `diff` (last token of positive minus negative), `actadd` (per-position difference, BOS prepended, the shorter padded with spaces: a sequence), `mean_diff` (mean last-token difference over pairs), `pca` (the first right singular vector of the pairs' last-token differences, uncentered unless `center`, signed toward the mean difference, unit norm). A vector mostly along the all-ones direction, which LayerNorm removes, is registered with a warning.",
        body: bodySchema,
        response: { 201: vector, ...errorResponses },
      },
    },
    async (request, reply) => {
      const v = await make(request.body);
      await svc.store.put(v, { replace: false, max: svc.config.limits.maxVectors });
      reply.code(201);
      return withWarnings(v);
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
      return withWarnings(v);
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
