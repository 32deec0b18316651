import { randomInt, randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import {
  admit,
  checkLimits,
  requestSignal,
  type SchemaRequest,
  streamErrors,
  timeoutError,
  tracked,
} from '../src/api/generation.js';
import { keepValues, receipt, receiptSchema, runRecord } from '../src/api/receipt.js';
import { resolveInterventions } from '../src/api/resolve.js';
import { errorResponses, interventionsSchema, OneOf, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import type { FinishReason } from '../src/engine/types.js';
import { BadRequestError } from '../src/errors.js';

const completionsSchema = {
  tags: ['openai'],
  summary: 'OpenAI-compatible completions (with an extra `interventions` field)',
  description:
    'Fields OpenAI defines and steerd does not use are accepted and ignored; `n` must be 1. Streaming sends `data: {chunk}` events and `data: [DONE]`.',
  body: Type.Object({
    model: Type.Optional(Type.String()),
    prompt: OneOf([
      Type.String({ minLength: 1 }),
      Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 1 }),
    ]),
    max_tokens: Type.Optional(Type.Integer({ minimum: 1, default: 16 })),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2, default: 1 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 1 })),
    n: Type.Optional(Type.Integer({ minimum: 1, default: 1 })),
    stop: Type.Optional(
      OneOf([Type.String(), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 }), Type.Null()]),
    ),
    seed: Type.Optional(Type.Integer()),
    stream: Type.Optional(Type.Boolean({ default: false })),
    frequency_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: 0 })),
    presence_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: 0 })),
    interventions: Type.Optional(interventionsSchema),
  }),
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
              logprobs: Type.Null(),
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

const openaiReason = (r: FinishReason) => (r === 'length' ? 'length' : 'stop');

/** OpenAI's completions API, so that any OpenAI client can call steerd; steering is the extra `interventions` field. */
const completionRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.get(
    '/v1/models',
    {
      schema: {
        tags: ['openai'],
        summary: 'OpenAI-compatible model list',
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
                  }),
                ),
              ),
            }),
          ),
        },
      },
    },
    async () => ({ object: 'list', data: [{ id: svc.model.name, object: 'model', created: 0, owned_by: 'steerd' }] }),
  );

  app.post(
    '/v1/completions',
    { sse: 'manual', schema: completionsSchema },
    streamErrors(async (request: SchemaRequest<typeof completionsSchema>, reply) => {
      const b = request.body;
      if ((b.n ?? 1) !== 1) throw new BadRequestError('n must be 1');
      const maxNew = b.max_tokens ?? 16;
      checkLimits(svc, maxNew);
      const text = Array.isArray(b.prompt) ? b.prompt[0] : b.prompt;
      const prompt = svc.engine.tokenizer.encode(text);
      const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions);
      const stop = b.stop == null || b.stop === '' ? undefined : typeof b.stop === 'string' ? [b.stop] : b.stop;
      const req = {
        prompt,
        max_new_tokens: maxNew,
        temperature: b.temperature,
        top_p: b.top_p,
        frequency_penalty: b.frequency_penalty,
        presence_penalty: b.presence_penalty,
        seed: b.seed ?? randomInt(0, 2 ** 32),
        stop,
        interventions,
      };
      const release = admit(svc);
      const sig = requestSignal(svc, request, reply);
      try {
        const events = tracked(svc, req, svc.engine.generate(req, { signal: sig.signal }));
        const id = `cmpl-${randomUUID()}`;
        const created = Math.floor(Date.now() / 1000);
        const chunk = <F extends string | null>(t: string, finish: F) => ({
          id,
          object: 'text_completion',
          created,
          model: svc.model.name,
          choices: [{ text: t, index: 0, logprobs: null, finish_reason: finish }],
        });
        const stream = b.stream && reply.sse;
        if (stream) {
          reply.sse!.keepAlive();
          reply.sse!.onClose(() => sig.abort());
        }
        const ids: number[] = [];
        for await (const e of events) {
          if (e.type === 'token') {
            if (e.id >= 0) ids.push(e.id);
            if (stream && e.text) await sig.send({ data: chunk(e.text, null) });
            continue;
          }
          if (sig.timedOut()) throw timeoutError(svc);
          const usage = {
            prompt_tokens: e.usage.prompt_tokens,
            completion_tokens: e.usage.completion_tokens,
            total_tokens: e.usage.prompt_tokens + e.usage.completion_tokens,
          };
          await keepValues(svc, interventions, applied);
          const rec = receipt(svc, [runRecord(req, applied, ids)]);
          if (stream) {
            await sig.send({ data: { ...chunk('', openaiReason(e.finish_reason)), usage, receipt: rec } });
            await sig.send({ data: '[DONE]' });
            reply.sse!.close();
            return reply;
          }
          return { ...chunk(e.text, openaiReason(e.finish_reason)), usage, receipt: rec };
        }
      } finally {
        sig.done();
        release();
      }
    }),
  );
};

export default completionRoutes;
