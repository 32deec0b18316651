import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { NORM_TEXT, NORMS_WAIT_MS, residNorms, residNormsWithin } from '../src/api/norms.js';
import { Dictionary, errorSchema, Nullable, Ref, StringEnum, siteSchema } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { DTYPES } from '../src/model/dtypes.js';

/** The stream's norms at each layer of one site, over the same text. */
const layerNorms = Type.Array(
  Type.Partial(Type.Object({ layer: Type.Integer(), mean: Type.Number(), median: Type.Number(), max: Type.Number() })),
);

const modelRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  // measured once, at start (the spec builder registers routes without an engine)
  if (svc.engine) residNorms(svc).catch(() => undefined);
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
              architecture: Type.String({ description: 'the model family: `gpt2` or `llama` (Llama, Qwen2, Mistral)' }),
              model_type: Type.String({ description: "config.json's `model_type`" }),
              random_weights: Type.Boolean({ description: 'a generated checkpoint: its text is nonsense' }),
              chat_template: Type.Boolean({
                description: 'the checkpoint has a chat template: `/v1/chat/completions` and `messages` serve it',
              }),
              n_layer: Type.Integer(),
              n_embd: Type.Integer(),
              n_head: Type.Integer(),
              n_kv_head: Type.Integer({
                description: 'key/value heads: fewer than n_head with grouped-query attention',
              }),
              n_positions: Type.Integer(),
              vocab_size: Type.Integer(),
              tokenizer: Type.Object({
                bos_token_id: Type.Integer(),
                eos_token_ids: Type.Array(Type.Integer(), {
                  description: 'the tokens that end a generation (config.json and generation_config.json)',
                }),
                add_bos: Type.Boolean({
                  description: "whether a prompt gets BOS first by default (`prepend_bos`'s default)",
                }),
              }),
              hook_points: Type.Array(Type.Integer()),
              provider: Type.String(),
              binding: StringEnum(['node', 'capi', 'queue'], {
                description:
                  'the binding of ONNX Runtime that runs the graphs (STEERD_BINDING): node (onnxruntime-node) or capi (the C API, I/O binding, the KV cache on the device); queue in Redis mode, where the workers run them',
              }),
              dtype: StringEnum([...DTYPES], {
                description:
                  "the blocks' linear maps (STEERD_DTYPE): float32, float16, or int8/int4 (blocks of 32 integers with a float32 scale, the unembedding too); the embeddings, norms, softmax, the KV cache and the logits are float32 in every one",
              }),
              limits: Dictionary(Type.Integer()),
              hook_sites: Type.Array(siteSchema, { description: 'the sites this server steers and reads at' }),
              site_norms: Dictionary(Nullable(layerNorms), {
                description:
                  'per enabled site other than resid_pre: the norms at each layer on the same text (what unit resid_norm counts there); null until measured',
              }),
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
                    layers: layerNorms,
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
      // not measured in time, or not at all (no engine answered): without them, measured again later
      const layers = await residNormsWithin(svc, NORMS_WAIT_MS);
      const others = svc.engine.info.hook_sites.filter((x) => x !== 'resid_pre');
      const siteNorms = await Promise.all(others.map((site) => residNormsWithin(svc, NORMS_WAIT_MS, site)));
      const i = svc.engine.info;
      return {
        id: svc.model.id,
        name: svc.model.name,
        architecture: i.architecture,
        model_type: i.model_type,
        random_weights: svc.model.random_weights,
        chat_template: svc.chatTemplate !== undefined,
        n_layer: i.n_layer,
        n_embd: i.n_embd,
        n_head: i.n_head,
        n_kv_head: i.n_kv_head,
        n_positions: i.n_positions,
        vocab_size: i.vocab_size,
        tokenizer: {
          bos_token_id: svc.engine.tokenizer.bosId,
          eos_token_ids: i.eos_token_ids,
          add_bos: svc.engine.tokenizer.addBos,
        },
        hook_points: Array.from({ length: i.n_layer + 1 }, (_, l) => l),
        provider: i.provider,
        binding: i.binding,
        dtype: i.dtype,
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
        hook_sites: i.hook_sites,
        site_norms: Object.fromEntries(others.map((site, k) => [site, siteNorms[k]])),
      };
    },
  );
};

export default modelRoutes;
