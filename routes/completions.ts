import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { admit, checkLimits, requestSignal, streamErrors, timeoutError, tracked } from '../src/api/generation.js';
import { type InterventionBody, resolveInterventions } from '../src/api/resolve.js';
import type { Service } from '../src/api/service.js';
import type { FinishReason } from '../src/engine/types.js';
import { BadRequestError } from '../src/errors.js';

interface Body {
  model?: string;
  prompt: string | string[];
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  n?: number;
  stop?: string | string[] | null;
  seed?: number;
  stream?: boolean;
  frequency_penalty?: number;
  presence_penalty?: number;
  interventions?: InterventionBody[];
}

const openaiReason = (r: FinishReason) => (r === 'length' ? 'length' : 'stop');

/** OpenAI's completions API, so that any OpenAI client can call steerd; steering is the extra `interventions` field. */
export default async function completionRoutes(app: FastifyInstance, { svc }: { svc: Service }) {
  app.get(
    '/v1/models',
    {
      schema: {
        tags: ['openai'],
        summary: 'OpenAI-compatible model list',
        response: {
          200: {
            type: 'object',
            properties: {
              object: { type: 'string' },
              data: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    id: { type: 'string' },
                    object: { type: 'string' },
                    created: { type: 'integer' },
                    owned_by: { type: 'string' },
                  },
                },
              },
            },
          },
        },
      },
    },
    async () => ({ object: 'list', data: [{ id: svc.model.name, object: 'model', created: 0, owned_by: 'steerd' }] }),
  );

  app.post<{ Body: Body }>(
    '/v1/completions',
    {
      sse: 'manual',
      schema: {
        tags: ['openai'],
        summary: 'OpenAI-compatible completions (with an extra `interventions` field)',
        description:
          'Fields OpenAI defines and steerd does not use are accepted and ignored; `n` must be 1. Streaming sends `data: {chunk}` events and `data: [DONE]`.',
        body: {
          type: 'object',
          required: ['prompt'],
          properties: {
            model: { type: 'string' },
            prompt: {
              oneOf: [
                { type: 'string', minLength: 1 },
                { type: 'array', items: { type: 'string', minLength: 1 }, minItems: 1, maxItems: 1 },
              ],
            },
            max_tokens: { type: 'integer', minimum: 1, default: 16 },
            temperature: { type: 'number', minimum: 0, maximum: 2, default: 1 },
            top_p: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 1 },
            n: { type: 'integer', minimum: 1, default: 1 },
            stop: {
              oneOf: [
                { type: 'string' },
                { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 4 },
                { type: 'null' },
              ],
            },
            seed: { type: 'integer' },
            stream: { type: 'boolean', default: false },
            frequency_penalty: { type: 'number', minimum: -2, maximum: 2, default: 0 },
            presence_penalty: { type: 'number', minimum: -2, maximum: 2, default: 0 },
            interventions: { type: 'array', items: { $ref: 'Intervention#' } },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              id: { type: 'string' },
              object: { type: 'string' },
              created: { type: 'integer' },
              model: { type: 'string' },
              choices: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    text: { type: 'string' },
                    index: { type: 'integer' },
                    logprobs: { type: 'null' },
                    finish_reason: { type: 'string' },
                  },
                },
              },
              usage: {
                type: 'object',
                properties: {
                  prompt_tokens: { type: 'integer' },
                  completion_tokens: { type: 'integer' },
                  total_tokens: { type: 'integer' },
                },
              },
            },
          },
          '4xx': { $ref: 'Error#' },
          '5xx': { $ref: 'Error#' },
        },
      },
    },
    streamErrors(async (request: FastifyRequest<{ Body: Body }>, reply) => {
      const b = request.body;
      if ((b.n ?? 1) !== 1) throw new BadRequestError('n must be 1');
      const maxNew = b.max_tokens ?? 16;
      checkLimits(svc, maxNew);
      const text = Array.isArray(b.prompt) ? b.prompt[0] : b.prompt;
      const prompt = svc.engine.tokenizer.encode(text);
      const { engine: interventions } = await resolveInterventions(svc, b.interventions);
      const stop = b.stop == null || b.stop === '' ? undefined : typeof b.stop === 'string' ? [b.stop] : b.stop;
      const req = {
        prompt,
        max_new_tokens: maxNew,
        temperature: b.temperature,
        top_p: b.top_p,
        frequency_penalty: b.frequency_penalty,
        presence_penalty: b.presence_penalty,
        seed: b.seed,
        stop,
        interventions,
      };
      const release = admit(svc);
      const sig = requestSignal(svc, request, reply);
      try {
        const events = tracked(svc, req, svc.engine.generate(req, { signal: sig.signal }));
        const id = `cmpl-${randomUUID()}`;
        const created = Math.floor(Date.now() / 1000);
        const chunk = (t: string, finish: string | null) => ({
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
        for await (const e of events) {
          if (e.type === 'token') {
            if (stream && e.text) await sig.send({ data: chunk(e.text, null) });
            continue;
          }
          if (sig.timedOut()) throw timeoutError(svc);
          const usage = {
            prompt_tokens: e.usage.prompt_tokens,
            completion_tokens: e.usage.completion_tokens,
            total_tokens: e.usage.prompt_tokens + e.usage.completion_tokens,
          };
          if (stream) {
            await sig.send({ data: { ...chunk('', openaiReason(e.finish_reason)), usage } });
            await sig.send({ data: '[DONE]' });
            reply.sse!.close();
            return reply;
          }
          return { ...chunk(e.text, openaiReason(e.finish_reason)), usage };
        }
      } finally {
        sig.done();
        release();
      }
    }),
  );
}
