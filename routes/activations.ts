import type { FastifyInstance } from 'fastify';
import { admit } from '../src/api/generation.js';
import { type InterventionBody, resolveInterventions } from '../src/api/resolve.js';
import type { Service } from '../src/api/service.js';
import type { Reduce } from '../src/engine/types.js';

interface Body {
  prompt: string;
  layers: number[];
  reduce?: Reduce;
  interventions?: InterventionBody[];
  encoding?: 'json' | 'base64';
  prepend_bos?: boolean;
}

export default async function activationRoutes(app: FastifyInstance, { svc }: { svc: Service }) {
  app.post<{ Body: Body }>(
    '/v1/activations',
    {
      schema: {
        tags: ['activations'],
        summary: 'Read the residual stream at chosen hook points',
        description:
          'Hook l is the stream entering block l (TransformerLens `blocks.l.hook_resid_pre`; l = n_layer is before ln_f), after any interventions. `reduce`: `none` (every position, [T][H]), `last` or `mean` ([H]). `encoding: "base64"` returns little-endian float32 bytes instead of numbers.',
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['prompt', 'layers'],
          properties: {
            prompt: { type: 'string', minLength: 1 },
            layers: { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1, maxItems: 256 },
            reduce: { type: 'string', enum: ['none', 'last', 'mean'], default: 'none' },
            interventions: { type: 'array', items: { $ref: 'Intervention#' } },
            encoding: { type: 'string', enum: ['json', 'base64'], default: 'json' },
            prepend_bos: { type: 'boolean', default: false },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              tokens: {
                type: 'array',
                items: { type: 'object', properties: { id: { type: 'integer' }, text: { type: 'string' } } },
              },
              shape: { type: 'array', items: { type: 'integer' }, description: '[T, H] or [H] per layer' },
              encoding: { type: 'string' },
              activations: { type: 'object', additionalProperties: true, description: 'hook point → values' },
            },
          },
          '4xx': { $ref: 'Error#' },
          '5xx': { $ref: 'Error#' },
        },
      },
    },
    async (request, _reply) => {
      const b = request.body;
      const tok = svc.engine.tokenizer;
      const prompt = [...(b.prepend_bos ? [tok.eosId] : []), ...tok.encode(b.prompt)];
      const { engine: interventions } = await resolveInterventions(svc, b.interventions);
      const release = admit(svc);
      try {
        const r = await svc.engine.activations({ prompt, layers: b.layers, reduce: b.reduce ?? 'none', interventions });
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
}
