import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { type TProperties, Type } from 'typebox';
import { chat, chatBodySchema } from '../src/api/chat.js';
import { complete } from '../src/api/completions.js';
import { type SchemaRequest, streamErrors } from '../src/api/generation.js';
import { chatLogprobSchema, completionsBodySchema, logprobsSchema, TokenStrings } from '../src/api/openai-wire.js';
import { receiptSchema } from '../src/api/receipt.js';
import { errorResponses, Nullable, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';

const usageSchema = Type.Partial(
  Type.Object({
    prompt_tokens: Type.Integer(),
    completion_tokens: Type.Integer(),
    total_tokens: Type.Integer(),
  }),
);

/** An OpenAI response whose choices have `choice`'s fields: the envelope of both completions APIs. */
const openaiResponse = (choice: TProperties) =>
  Type.Partial(
    Type.Object({
      id: Type.String(),
      object: Type.String(),
      created: Type.Integer(),
      model: Type.String(),
      choices: Type.Array(Type.Partial(Type.Object(choice))),
      usage: usageSchema,
      receipt: Ref(receiptSchema),
    }),
  );

const completionsSchema = {
  tags: ['openai'],
  summary: 'OpenAI-compatible completions (with an extra `interventions` field)',
  description:
    "OpenAI's legacy completions: `n` completions of each prompt (choice index = prompt index × n + i; choice i samples with seed + i, the seed drawn once when absent), `logprobs` (0–5), `echo` (with `logprobs`: the prompt's tokens scored, the first one null), `max_tokens` 0 (nothing generated, so a prompt may fill the context: with `echo` and `logprobs`, the prompt scored; as lm-evaluation-harness's loglikelihood requests send). `prompt` may be token ids (lm-evaluation-harness's `tokenized_requests`); all prompts and choices are admitted together, and a prompt is scored by its first choice's prefill (streaming: by a prompt pass of its own). Each choice is a generation of its own, all admitted together (they share batches); the receipt has one run per choice, in choice order (with `max_tokens` 0: one per prompt). Fields OpenAI defines and steerd does not use are accepted and ignored; `best_of` must be 1. Streaming sends `data: {chunk}` events (each with its choice's `index`; the choices' chunks interleave; a choice's last chunk has its `finish_reason`, the last of all also `usage` and `receipt`), then `data: [DONE]`.",
  body: completionsBodySchema,
  response: {
    200: openaiResponse({
      text: Type.String(),
      index: Type.Integer(),
      logprobs: Nullable(logprobsSchema),
      finish_reason: Type.String(),
    }),
    ...errorResponses,
  },
};

const chatSchema = {
  tags: ['openai'],
  summary: "OpenAI-compatible chat completions, by the model's chat template (with an extra `interventions` field)",
  description:
    "OpenAI's chat completions: the `messages` rendered by the checkpoint's chat template (tokenizer_config.json `chat_template`, or chat_template.jinja) with the generation prompt, then generated as `/v1/completions` generates a prompt: `n` choices (choice i samples with seed + i, the seed drawn once when absent), all admitted together, the receipt with one run per choice. A model without a chat template (GPT-2) answers 400 `unsupported`: use `/v1/completions`. A choice ends at EOS, at the text that closes the template's assistant turn (`<|im_end|>`, `<|eot_id|>`: added to `stop`, so the receipt shows it) or at a `stop` string (`finish_reason` `stop`), or after `max_completion_tokens` (`length`; default 64). `logprobs: true` gives each generated token (not the EOS that ended the choice) with `top_logprobs` (0–20) alternatives. Fields OpenAI defines and steerd does not use (tools, response_format, ...) are accepted and ignored. Streaming sends `chat.completion.chunk` events: per choice first a `delta` with `role: \"assistant\"`, then its text, then one with its `finish_reason` (the last of all also carries the `receipt`); with `stream_options.include_usage` a chunk with no choices and the `usage`; then `data: [DONE]`.",
  body: chatBodySchema,
  response: {
    200: openaiResponse({
      index: Type.Integer(),
      message: Type.Partial(Type.Object({ role: Type.String(), content: Type.String() })),
      logprobs: Nullable(
        Type.Object({ content: Type.Array(chatLogprobSchema) }, { description: 'with `logprobs: true`' }),
      ),
      finish_reason: Type.String(),
    }),
    ...errorResponses,
  },
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

  app.post(
    '/v1/chat/completions',
    { sse: 'manual', schema: chatSchema },
    streamErrors(async (request: SchemaRequest<typeof chatSchema>, reply) =>
      chat(svc, request, reply, request.body, strings()),
    ),
  );

  app.post(
    '/v1/completions',
    { sse: 'manual', schema: completionsSchema },
    streamErrors(async (request: SchemaRequest<typeof completionsSchema>, reply) =>
      complete(svc, request, reply, request.body, strings()),
    ),
  );
};

export default completionRoutes;
