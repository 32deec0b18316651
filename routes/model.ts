import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { Dictionary, errorSchema, Nullable, Ref, StringEnum } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';

/** A fixed, neutral text whose residual-stream norms tell clients what coefficient sizes mean. */
export const NORM_TEXT =
  'The city council met on Tuesday to discuss the budget for the coming year. Members reviewed the reports, asked questions, and agreed to continue the discussion at the next meeting.';

/** How long /v1/model waits for the norms (measured at start) before answering without them. */
const NORMS_WAIT_MS = 5000;

export interface NormStat {
  layer: number;
  mean: number;
  median: number;
  max: number;
}

/** Per hook point: mean, median and max L2 norm over positions (the first position, an outlier in GPT-2, left out). */
export async function residNorms(svc: Service): Promise<NormStat[]> {
  const { engine } = svc;
  const prompt = engine.tokenizer.encode(NORM_TEXT).slice(0, engine.maxContext);
  const layers = Array.from({ length: engine.info.n_layer + 1 }, (_, l) => l);
  const r = await engine.activations({ prompt, layers, reduce: 'none' });
  const H = engine.info.n_embd;
  return layers.map((l) => {
    const a = r.activations[l];
    const norms: number[] = [];
    for (let t = 1; t < r.rows; t++) {
      let s = 0;
      for (let i = 0; i < H; i++) s += a[t * H + i] ** 2;
      norms.push(Math.sqrt(s));
    }
    norms.sort((x, y) => x - y);
    return {
      layer: l,
      mean: norms.reduce((x, y) => x + y, 0) / norms.length,
      median: norms[norms.length >> 1],
      max: norms[norms.length - 1],
    };
  });
}

const modelRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  // measured once, at start (the spec builder registers routes without an engine)
  const measure = () =>
    residNorms(svc).catch((e) => {
      norms = undefined; // measured again on the next request
      throw e;
    });
  let norms: Promise<NormStat[]> | undefined = svc.engine ? measure() : undefined;
  norms?.catch(() => undefined);
  app.get(
    '/v1/model',
    {
      schema: {
        tags: ['model'],
        summary: 'The served model: architecture, limits, and residual-stream norms per hook point',
        response: {
          200: Type.Partial(
            Type.Object({
              id: Type.String(),
              name: Type.String(),
              architecture: Type.String(),
              random_weights: Type.Boolean({ description: 'a generated checkpoint: its text is nonsense' }),
              n_layer: Type.Integer(),
              n_embd: Type.Integer(),
              n_head: Type.Integer(),
              n_positions: Type.Integer(),
              vocab_size: Type.Integer(),
              hook_points: Type.Array(Type.Integer()),
              provider: Type.String(),
              limits: Dictionary(Type.Integer()),
              kv_cache: Nullable(
                Type.Object(
                  {
                    tokens: Type.Integer({
                      description: 'tokens of keys and values held at once, all requests together',
                    }),
                    bytes_per_token: Type.Integer(),
                    location: StringEnum(['host', 'device'], {
                      description: '`host`: fed to every session run; `device`: kept on the accelerator',
                    }),
                    classes: Type.Array(Type.Integer(), {
                      description: 'size classes: a request reserves its prompt + max_new_tokens rounded up to one',
                    }),
                  },
                  {
                    description:
                      "the engine's KV cache; null in Redis mode, where each worker has its own (steerd:kv_cache_usage_perc in /metrics sums them)",
                  },
                ),
              ),
              resid_norms: Nullable(
                Type.Partial(
                  Type.Object({
                    text: Type.String(),
                    layers: Type.Array(
                      Type.Partial(
                        Type.Object({
                          layer: Type.Integer(),
                          mean: Type.Number(),
                          median: Type.Number(),
                          max: Type.Number(),
                        }),
                      ),
                    ),
                  }),
                  {
                    description: `null until an engine has measured them (Redis mode: while no worker answers within ${NORMS_WAIT_MS / 1000} s)`,
                  },
                ),
              ),
            }),
          ),
          '5xx': Ref(errorSchema),
        },
      },
    },
    async () => {
      norms ??= measure();
      let timer: NodeJS.Timeout | undefined;
      // not measured in time, or not at all (no engine answered): without them, measured again later
      const measured = norms.catch(() => null);
      const layers = await Promise.race([
        measured,
        new Promise<null>((r) => (timer = setTimeout(() => r(null), NORMS_WAIT_MS))),
      ]).finally(() => clearTimeout(timer));
      const i = svc.engine.info;
      return {
        id: svc.model.id,
        name: svc.model.name,
        architecture: 'gpt2',
        random_weights: svc.model.random_weights,
        n_layer: i.n_layer,
        n_embd: i.n_embd,
        n_head: i.n_head,
        n_positions: i.n_positions,
        vocab_size: i.vocab_size,
        hook_points: Array.from({ length: i.n_layer + 1 }, (_, l) => l),
        provider: i.provider,
        limits: {
          max_new_tokens: svc.config.limits.maxNewTokens,
          max_interventions: svc.config.limits.maxInterventions,
          max_vectors: svc.config.limits.maxVectors,
          body_limit: svc.config.limits.bodyLimit,
          queue_depth: svc.config.limits.queueDepth,
          request_timeout_ms: svc.config.limits.requestTimeoutMs,
          max_context: svc.engine.maxContext,
          ...(i.kv_cache && { kv_cache_tokens: i.kv_cache.tokens }),
        },
        kv_cache: i.kv_cache ?? null,
        resid_norms: layers && { text: NORM_TEXT, layers },
      };
    },
  );
};

export default modelRoutes;
