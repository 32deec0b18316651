import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { type Static, Type } from 'typebox';
import { admit } from '../src/api/generation.js';
import { resolveInterventions } from '../src/api/resolve.js';
import {
  type Agrees,
  Dictionary,
  errorResponses,
  interventionsSchema,
  PREPEND_BOS,
  type Same,
  StringEnum,
  siteSchema,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import type { Reduce } from '../src/engine/types.js';
import { encodeText } from '../src/model/tokenizer.js';

const reduceSchema = StringEnum(['none', 'last', 'mean'], { default: 'none' });
type _Reduce = Agrees<Same<Static<typeof reduceSchema>, Reduce>>;

const activationRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post(
    '/v1/activations',
    {
      schema: {
        tags: ['activations'],
        summary: 'Read the residual stream (or another hook site) at chosen layers',
        description:
          'At `site` resid_pre (default), layer l is the stream entering block l (TransformerLens `blocks.l.hook_resid_pre`; l = n_layer is before ln_f); the other sites (ln1, attn_out, resid_mid, ln2, mlp_out) are read inside block l. Values are after any interventions at that hook. `reduce`: `none` (every position, [T][H]), `last` or `mean` ([H]). `encoding: "base64"` returns little-endian float32 bytes instead of numbers.',
        body: Type.Object(
          {
            prompt: Type.String({ minLength: 1 }),
            layers: Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, maxItems: 256 }),
            site: Type.Optional(siteSchema),
            reduce: Type.Optional(reduceSchema),
            interventions: Type.Optional(interventionsSchema),
            encoding: Type.Optional(StringEnum(['json', 'base64'], { default: 'json' })),
            prepend_bos: Type.Optional(Type.Boolean({ description: PREPEND_BOS })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Partial(
            Type.Object({
              tokens: Type.Array(Type.Partial(Type.Object({ id: Type.Integer(), text: Type.String() }))),
              shape: Type.Array(Type.Integer(), { description: '[T, H] or [H] per layer' }),
              encoding: Type.String(),
              activations: Dictionary(true, { description: 'hook point → values' }),
            }),
          ),
          ...errorResponses,
        },
      },
    },
    async (request, _reply) => {
      const b = request.body;
      const tok = svc.engine.tokenizer;
      const prompt = encodeText(tok, b.prompt, b.prepend_bos);
      const { engine: interventions } = await resolveInterventions(svc, b.interventions);
      const release = admit(svc);
      try {
        const r = await svc.engine.activations({
          prompt,
          layers: b.layers,
          site: b.site,
          reduce: b.reduce ?? 'none',
          interventions,
        });
        const H = svc.engine.info.n_embd;
        const activations: Record<string, unknown> = {};
        for (const [l, a] of Object.entries(r.activations)) {
          if (b.encoding === 'base64')
            activations[l] = Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
          else if (r.rows === 1 && (b.reduce ?? 'none') !== 'none') activations[l] = Array.from(a);
          else activations[l] = Array.from({ length: r.rows }, (_, t) => Array.from(a.subarray(t * H, (t + 1) * H)));
        }
        return {
          tokens: prompt.map((id) => ({ id, text: tok.decode([id]) })),
          shape: (b.reduce ?? 'none') === 'none' ? [r.rows, H] : [H],
          encoding: b.encoding ?? 'json',
          activations,
        };
      } finally {
        release();
      }
    },
  );
};

export default activationRoutes;
