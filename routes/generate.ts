import { randomInt, randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { apiToken, collect, completionOf, completionProperties } from '../src/api/completion.js';
import { ARMS, type Arm, controlArm } from '../src/api/controls.js';
import {
  admit,
  checkLimits,
  requestSignal,
  type SchemaRequest,
  streamErrors,
  timeoutError,
  tracked,
} from '../src/api/generation.js';
import { presetOf } from '../src/api/presets.js';
import { keepValues, receipt, receiptSchema, runRecord } from '../src/api/receipt.js';
import { resolveInterventions } from '../src/api/resolve.js';
import {
  appliedInterventionSchema,
  errorResponses,
  interventionsSchema,
  modelField,
  OneOf,
  Ref,
  StringEnum,
  samplingProperties,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import type { GenerateRequest } from '../src/engine/types.js';

const schema = {
  tags: ['generation'],
  summary: 'Generate text with steering interventions',
  description:
    'Tokenizes the prompt as Hugging Face does for GPT-2 (no BOS unless `prepend_bos`), generates with the given sampling parameters and interventions, and reports what was applied. `stream: true` answers with server-sent events: one `token` event per token, then a `done` event with the rest of the response. `telemetry: true` runs an unsteered twin in the same batch, fed the steered tokens: each token gains its baseline logprob, the KL between the two distributions and the projections of the steered stream, the response a summary. `compare` adds control arms in the same batch, with the same seed: `true` (the unsteered baseline) or a list of `baseline`, `negated` (coefficients × −1), `random` (vectors replaced by random ones of the same norms). The `receipt` is what `POST /v1/replay` runs again.',
  body: Type.Object(
    {
      model: modelField,
      prompt: Type.String({ minLength: 1 }),
      ...samplingProperties,
      interventions: Type.Optional(interventionsSchema),
      telemetry: Type.Optional(Type.Boolean({ default: false })),
      compare: Type.Optional(
        OneOf([Type.Boolean(), Type.Array(StringEnum([...ARMS]), { minItems: 1, maxItems: 3, uniqueItems: true })], {
          description: 'control arms run beside the request: true (baseline), or a list of baseline, negated, random',
        }),
      ),
      stream: Type.Optional(Type.Boolean({ default: false })),
      prepend_bos: Type.Optional(Type.Boolean({ default: false })),
      top_logprobs: Type.Optional(
        Type.Integer({
          minimum: 0,
          maximum: 20,
          description: 'each token then carries this many of the most likely tokens at its position, with logprobs',
        }),
      ),
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
        interventions: Type.Array(appliedInterventionSchema),
        baseline: Type.Partial(Type.Object(completionProperties)),
        controls: Type.Partial(
          Type.Object({
            negated: Type.Partial(Type.Object(completionProperties)),
            random: Type.Partial(
              Type.Object({
                ...completionProperties,
                vectors: Type.Array(Type.Object({ hash: Type.String(), norm: Type.Number() }), {
                  description: 'the random vectors, one per intervention: content hash and norm',
                }),
              }),
            ),
          }),
        ),
        receipt: Ref(receiptSchema),
      }),
      { description: 'The completion (or, with `stream: true`, a text/event-stream).' },
    ),
    ...errorResponses,
  },
};

const generateRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post('/v1/generate', { sse: 'manual', schema }, streamErrors(handle));

  async function handle(request: SchemaRequest<typeof schema>, reply: FastifyReply) {
    const b = request.body;
    const { engine } = svc;
    const maxNew = b.max_new_tokens ?? 64;
    checkLimits(svc, maxNew);
    const prompt = [...(b.prepend_bos ? [engine.tokenizer.eosId] : []), ...engine.tokenizer.encode(b.prompt)];
    const preset = await presetOf(svc, b.model);
    const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions, preset);
    const seed = b.seed ?? randomInt(0, 2 ** 32);
    const {
      stream: _s,
      compare: _c,
      prepend_bos: _p,
      interventions: _i,
      prompt: _text,
      model: _m,
      telemetry,
      ...sampling
    } = b;
    const req: GenerateRequest = {
      ...sampling,
      prompt,
      max_new_tokens: maxNew,
      seed,
      stop: typeof b.stop === 'string' ? [b.stop] : b.stop,
      interventions,
      telemetry,
    };
    const arms: Arm[] = b.compare === true ? ['baseline'] : Array.isArray(b.compare) ? b.compare : [];
    const release = admit(svc, 1 + arms.length);
    const sig = requestSignal(svc, request, reply);
    try {
      const steered = engine.generate(req, { signal: sig.signal });
      // every arm is submitted now, with the request: they run in the same batches
      const controls = arms.map((arm) => {
        const run = controlArm(arm, interventions, applied, seed);
        const result = collect(
          svc,
          tracked(svc, req, engine.generate({ ...req, interventions: run.interventions }, { signal: sig.signal })),
        );
        result.catch(() => sig.abort()); // awaited below; a failure of the steered run must not leave it unhandled
        return { arm, run, result };
      });
      const id = `gen-${randomUUID()}`;
      const stream = sig.openStream(b.stream);
      let result: Awaited<ReturnType<typeof collect>>;
      try {
        result = await collect(svc, tracked(svc, req, steered), async (e) => {
          if (!stream || e.type !== 'token') return;
          // id -1: text held back (a stop-string prefix, part of a character) released at the end
          // a token event's text is what the token released (held back while a stop string may start)
          if (e.id >= 0) await sig.send({ event: 'token', data: { ...apiToken(svc, e), text: e.text } });
          else if (e.text) await sig.send({ event: 'text', data: { text: e.text } });
        });
      } catch (e) {
        sig.abort();
        await Promise.all(controls.map((c) => c.result.catch(() => undefined)));
        throw e;
      }
      if (sig.timedOut()) throw timeoutError(svc);
      const arm = async (name: Arm) => {
        const c = controls.find((x) => x.arm === name);
        if (!c) return undefined;
        return { ...completionOf(await c.result), ...(c.run.vectors && { vectors: c.run.vectors }) };
      };
      const [baseline, negated, random] = await Promise.all([arm('baseline'), arm('negated'), arm('random')]);
      await keepValues(svc, interventions, applied);
      const body = {
        id,
        model: preset?.name ?? svc.model.name,
        ...completionOf(result),
        seed: result.done.seed,
        timings: result.done.timings,
        interventions: applied,
        ...(baseline && { baseline }),
        ...((negated || random) && { controls: { ...(negated && { negated }), ...(random && { random }) } }),
        receipt: receipt(
          svc,
          [
            runRecord(
              req,
              applied,
              result.tokens.map((t) => t.id),
            ),
          ],
          preset?.name,
        ),
      };
      if (stream) {
        const { tokens: _, ...rest } = body;
        return sig.close({ event: 'done', data: rest });
      }
      return body;
    } finally {
      sig.done();
      release();
    }
  }
};

export default generateRoutes;
