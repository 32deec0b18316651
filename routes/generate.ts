import { randomInt, randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
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
import { resolveInterventions } from '../src/api/resolve.js';
import {
  errorResponses,
  finishReasonSchema,
  interventionsSchema,
  Nullable,
  samplingProperties,
  tokenSchema,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import type { DoneEvent, GenerateEvent, GenerateRequest } from '../src/engine/types.js';

const completionProperties = {
  text: Type.String(),
  tokens: Type.Array(tokenSchema),
  finish_reason: finishReasonSchema,
  usage: Type.Partial(Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer() })),
};

const schema = {
  tags: ['generation'],
  summary: 'Generate text with steering interventions',
  description:
    'Tokenizes the prompt as Hugging Face does for GPT-2 (no BOS unless `prepend_bos`), generates with the given sampling parameters and interventions, and reports what was applied. `stream: true` answers with server-sent events: one `token` event per token, then a `done` event with the rest of the response. `compare: true` also returns the unsteered completion with the same seed.',
  body: Type.Object(
    {
      prompt: Type.String({ minLength: 1 }),
      ...samplingProperties,
      interventions: Type.Optional(interventionsSchema),
      compare: Type.Optional(Type.Boolean({ default: false })),
      stream: Type.Optional(Type.Boolean({ default: false })),
      prepend_bos: Type.Optional(Type.Boolean({ default: false })),
    },
    { additionalProperties: false },
  ),
  response: {
    200: Type.Partial(
      Type.Object({
        id: Type.String(),
        model: Type.String(),
        ...completionProperties,
        seed: Type.Integer(),
        timings: Type.Partial(
          Type.Object({ queue_ms: Type.Number(), first_token_ms: Type.Number(), total_ms: Type.Number() }),
        ),
        interventions: Type.Array(
          Type.Partial(
            Type.Object({
              vector: Nullable(Type.String()),
              hash: Type.String(),
              shape: Type.Array(Type.Integer()),
              layer: Type.Integer(),
              coeff: Type.Number(),
              positions: Type.String(),
            }),
          ),
        ),
        baseline: Type.Partial(Type.Object(completionProperties)),
      }),
      { description: 'The completion (or, with `stream: true`, a text/event-stream).' },
    ),
    ...errorResponses,
  },
};

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

const generateRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post('/v1/generate', { sse: 'manual', schema }, streamErrors(handle));

  async function handle(request: SchemaRequest<typeof schema>, reply: FastifyReply) {
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
};

export default generateRoutes;
