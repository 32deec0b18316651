import { randomInt, randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { admit, checkLimits, requestSignal, streamErrors, timeoutError, tracked } from '../src/api/generation.js';
import { type InterventionBody, resolveInterventions } from '../src/api/resolve.js';
import { samplingProperties, tokenSchema } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import type { DoneEvent, GenerateEvent, GenerateRequest, SamplingParams } from '../src/engine/types.js';

/** The engine's sampling parameters, with `stop` also accepted as one string. */
interface GenerateBody extends Omit<SamplingParams, 'stop' | 'stop_at_eos'> {
  prompt: string;
  stop?: string | string[];
  interventions?: InterventionBody[];
  compare?: boolean;
  stream?: boolean;
  prepend_bos?: boolean;
}

const completionSchema = {
  type: 'object',
  properties: {
    text: { type: 'string' },
    tokens: { type: 'array', items: tokenSchema },
    finish_reason: { type: 'string', enum: ['length', 'eos', 'stop', 'cancelled'] },
    usage: {
      type: 'object',
      properties: { prompt_tokens: { type: 'integer' }, completion_tokens: { type: 'integer' } },
    },
  },
} as const;

/** A completion collected from the engine's events. */
async function collect(
  svc: Service,
  events: AsyncIterable<GenerateEvent>,
  onToken?: (e: GenerateEvent) => Promise<void>,
) {
  const tokens: { id: number; text: string; logprob: number }[] = [];
  let done: DoneEvent | undefined;
  for await (const e of events) {
    if (e.type === 'token' && e.id >= 0)
      tokens.push({ id: e.id, text: svc.engine.tokenizer.decode([e.id]), logprob: e.logprob });
    if (e.type === 'done') done = e;
    await onToken?.(e);
  }
  return { tokens, done: done! };
}

export default async function generateRoutes(app: FastifyInstance, { svc }: { svc: Service }) {
  app.post<{ Body: GenerateBody }>(
    '/v1/generate',
    {
      sse: 'manual',
      schema: {
        tags: ['generation'],
        summary: 'Generate text with steering interventions',
        description:
          'Tokenizes the prompt as Hugging Face does for GPT-2 (no BOS unless `prepend_bos`), generates with the given sampling parameters and interventions, and reports what was applied. `stream: true` answers with server-sent events: one `token` event per token, then a `done` event with the rest of the response. `compare: true` also returns the unsteered completion with the same seed.',
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['prompt'],
          properties: {
            prompt: { type: 'string', minLength: 1 },
            ...samplingProperties,
            interventions: { type: 'array', items: { $ref: 'Intervention#' } },
            compare: { type: 'boolean', default: false },
            stream: { type: 'boolean', default: false },
            prepend_bos: { type: 'boolean', default: false },
          },
        },
        response: {
          200: {
            description: 'The completion (or, with `stream: true`, a text/event-stream).',
            type: 'object',
            properties: {
              id: { type: 'string' },
              model: { type: 'string' },
              ...completionSchema.properties,
              seed: { type: 'integer' },
              timings: {
                type: 'object',
                properties: {
                  queue_ms: { type: 'number' },
                  first_token_ms: { type: 'number' },
                  total_ms: { type: 'number' },
                },
              },
              interventions: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    vector: { type: ['string', 'null'] },
                    hash: { type: 'string' },
                    shape: { type: 'array', items: { type: 'integer' } },
                    layer: { type: 'integer' },
                    coeff: { type: 'number' },
                    positions: { type: 'string' },
                  },
                },
              },
              baseline: completionSchema,
            },
          },
          '4xx': { $ref: 'Error#' },
          '5xx': { $ref: 'Error#' },
        },
      },
    },
    streamErrors(handle),
  );

  async function handle(request: FastifyRequest<{ Body: GenerateBody }>, reply: FastifyReply) {
    const b = request.body;
    const { engine } = svc;
    const maxNew = b.max_new_tokens ?? 64;
    checkLimits(svc, maxNew);
    const prompt = [...(b.prepend_bos ? [engine.tokenizer.eosId] : []), ...engine.tokenizer.encode(b.prompt)];
    const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions);
    const seed = b.seed ?? randomInt(0, 2 ** 32);
    const { stream: _s, compare: _c, prepend_bos: _p, interventions: _i, prompt: _text, ...sampling } = b;
    const req: GenerateRequest = {
      ...sampling,
      prompt,
      max_new_tokens: maxNew,
      seed,
      stop: typeof b.stop === 'string' ? [b.stop] : b.stop,
      interventions,
    };
    const release = admit(svc);
    const sig = requestSignal(svc, request, reply);
    try {
      const steered = engine.generate(req, { signal: sig.signal });
      const baseline = b.compare ? engine.generate({ ...req, interventions: [] }, { signal: sig.signal }) : undefined;
      const baselineResult = baseline && collect(svc, tracked(svc, req, baseline));
      baselineResult?.catch(() => sig.abort()); // awaited below; a failure of the steered run must not leave it unhandled
      const id = `gen-${randomUUID()}`;
      const stream = b.stream && reply.sse;
      if (stream) {
        reply.sse!.keepAlive();
        reply.sse!.onClose(() => sig.abort());
      }
      let result: Awaited<ReturnType<typeof collect>>;
      try {
        result = await collect(svc, tracked(svc, req, steered), async (e) => {
          if (!stream || e.type !== 'token') return;
          // id -1: text held back (a stop-string prefix, part of a character) released at the end
          if (e.id >= 0) await sig.send({ event: 'token', data: { id: e.id, text: e.text, logprob: e.logprob } });
          else if (e.text) await sig.send({ event: 'text', data: { text: e.text } });
        });
      } catch (e) {
        sig.abort();
        await baselineResult?.catch(() => undefined);
        throw e;
      }
      if (sig.timedOut()) throw timeoutError(svc);
      const body = {
        id,
        model: svc.model.name,
        text: result.done.text,
        tokens: result.tokens,
        finish_reason: result.done.finish_reason,
        usage: result.done.usage,
        seed: result.done.seed,
        timings: result.done.timings,
        interventions: applied,
        ...(baselineResult && {
          baseline: await baselineResult.then((r) => ({
            text: r.done.text,
            tokens: r.tokens,
            finish_reason: r.done.finish_reason,
            usage: r.done.usage,
          })),
        }),
      };
      if (stream) {
        const { tokens: _, ...rest } = body;
        await sig.send({ event: 'done', data: rest });
        reply.sse!.close();
        return reply;
      }
      return body;
    } finally {
      sig.done();
      release();
    }
  }
}
