import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { complete } from '../src/api/completions.js';
import { type SchemaRequest, streamErrors } from '../src/api/generation.js';
import { completionsBodySchema, logprobsSchema, TokenStrings } from '../src/api/openai-wire.js';
import { receiptSchema } from '../src/api/receipt.js';
import { errorResponses, Nullable, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { SteerdError } from '../src/errors.js';

const completionsSchema = {
  tags: ['openai'],
  summary: 'OpenAI-compatible completions (with an extra `interventions` field)',
  description:
    "OpenAI's legacy completions: `n` completions of each prompt (choice index = prompt index × n + i; choice i samples with seed + i, the seed drawn once when absent), `logprobs` (0–5), `echo` (with `logprobs`: the prompt's tokens scored, the first one null), `max_tokens` 0 (nothing generated, so a prompt may fill the context: with `echo` and `logprobs`, the prompt scored; as lm-evaluation-harness's loglikelihood requests send). `prompt` may be token ids (lm-evaluation-harness's `tokenized_requests`); all prompts and choices are admitted together, and a prompt is scored by its first choice's prefill (streaming: by a prompt pass of its own). Each choice is a generation of its own, all admitted together (they share batches); the receipt has one run per choice, in choice order (with `max_tokens` 0: one per prompt). Fields OpenAI defines and steerd does not use are accepted and ignored; `best_of` must be 1. Streaming sends `data: {chunk}` events (each with its choice's `index`; the choices' chunks interleave; a choice's last chunk has its `finish_reason`, the last of all also `usage` and `receipt`), then `data: [DONE]`.",
  body: completionsBodySchema,
  response: {
    200: Type.Partial(
      Type.Object({
        id: Type.String(),
        object: Type.String(),
        created: Type.Integer(),
        model: Type.String(),
        choices: Type.Array(
          Type.Partial(
            Type.Object({
              text: Type.String(),
              index: Type.Integer(),
              logprobs: Nullable(logprobsSchema),
              finish_reason: Type.String(),
            }),
          ),
        ),
        usage: Type.Partial(
          Type.Object({
            prompt_tokens: Type.Integer(),
            completion_tokens: Type.Integer(),
            total_tokens: Type.Integer(),
          }),
        ),
        receipt: Ref(receiptSchema),
      }),
    ),
    ...errorResponses,
  },
};

const chatSchema = {
  tags: ['openai'],
  summary: 'Not supported: GPT-2 has no chat template',
  description: 'Always 400 (`unsupported`): GPT-2 is a base model without a chat template; use `/v1/completions`.',
  response: errorResponses,
};

/** OpenAI's completions API, so that any OpenAI client can call steerd; steering is the extra `interventions` field. */
const completionRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  // (registering the routes touches no model: the service may have none, as for openapi.yaml)

  // the wire's token strings, kept per model (made on first use: registering touches no model)
  let wire: TokenStrings | undefined;
  const strings = () => {
    if (wire?.tokenizer !== svc.engine.tokenizer) wire = new TokenStrings(svc.engine.tokenizer);
    return wire;
  };

  app.get(
    '/v1/models',
    {
      schema: {
        tags: ['openai'],
        summary: 'OpenAI-compatible model list: the base model, then every preset (`parent`: the base model)',
        response: {
          200: Type.Partial(
            Type.Object({
              object: Type.String(),
              data: Type.Array(
                Type.Partial(
                  Type.Object({
                    id: Type.String(),
                    object: Type.String(),
                    created: Type.Integer(),
                    owned_by: Type.String(),
                    parent: Nullable(
                      Type.String({ description: 'a preset: the base model it steers (the base model: null)' }),
                    ),
                    description: Nullable(Type.String({ description: "a preset's description" })),
                  }),
                ),
              ),
            }),
          ),
        },
      },
    },
    async () => {
      const presets = await svc.store.listPresets(svc.model.id);
      return {
        object: 'list',
        data: [
          { id: svc.model.name, object: 'model', created: 0, owned_by: 'steerd', parent: null },
          ...presets.map((p) => ({
            id: p.name,
            object: 'model',
            created: Math.floor(Date.parse(p.created_at) / 1000),
            owned_by: 'steerd',
            parent: svc.model.name,
            description: p.description,
          })),
        ],
      };
    },
  );

  app.post('/v1/chat/completions', { schema: chatSchema }, async () => {
    throw new SteerdError(
      `GPT-2 has no chat template: ${svc.model.name} is a base model that continues text; use /v1/completions with a prompt`,
      400,
      'unsupported',
    );
  });

  app.post(
    '/v1/completions',
    { sse: 'manual', schema: completionsSchema },
    streamErrors(async (request: SchemaRequest<typeof completionsSchema>, reply) =>
      complete(svc, request, reply, request.body, strings()),
    ),
  );
};

export default completionRoutes;
