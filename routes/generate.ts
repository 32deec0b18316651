import { randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { generatePrompt, messagesSchema } from '../src/api/chat.js';
import { type ApiToken, completionOf, completionProperties } from '../src/api/completion.js';
import { ARMS, type Arm, controlArm } from '../src/api/controls.js';
import { checkLimits, type SchemaRequest, streamErrors } from '../src/api/generation.js';
import { presetOf } from '../src/api/presets.js';
import { receiptOf, receiptSchema } from '../src/api/receipt.js';
import { resolveInterventions } from '../src/api/resolve.js';
import {
  appliedInterventionSchema,
  errorResponses,
  interventionsSchema,
  modelField,
  OneOf,
  PREPEND_BOS,
  Ref,
  StringEnum,
  samplingProperties,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { Session } from '../src/api/session.js';
import { withDefaults } from '../src/engine/defaults.js';
import type { GenerateEvent } from '../src/engine/types.js';

const schema = {
  tags: ['generation'],
  summary: 'Generate text with steering interventions',
  description:
    "Tokenizes the prompt as Hugging Face does (BOS first where `prepend_bos` says, by default as the checkpoint's tokenizer does), or, instead of a prompt, renders `messages` by the model's chat template as `/v1/chat/completions` does (its end of turn added to `stop`; a model without a template: 400), then generates with the given sampling parameters and interventions, and reports what was applied. `stream: true` answers with server-sent events: one `token` event per token, then a `done` event with the rest of the response. `telemetry: true` runs an unsteered twin in the same batch, fed the steered tokens: each token gains its baseline logprob, the KL between the two distributions and the projections of the steered stream, the response a summary. `compare` adds control arms in the same batch, with the same seed: `true` (the unsteered baseline) or a list of `baseline`, `negated` (coefficients × −1), `random` (vectors replaced by random ones of the same norms). The `receipt` is what `POST /v1/replay` runs again.",
  body: Type.Object(
    {
      model: modelField,
      prompt: Type.Optional(Type.String({ minLength: 1, description: 'the text to continue (or `messages`)' })),
      ...samplingProperties,
      interventions: Type.Optional(interventionsSchema),
      telemetry: Type.Optional(Type.Boolean({ default: false })),
      compare: Type.Optional(
        OneOf([Type.Boolean(), Type.Array(StringEnum([...ARMS]), { minItems: 1, maxItems: 3, uniqueItems: true })], {
          description: 'control arms run beside the request: true (baseline), or a list of baseline, negated, random',
        }),
      ),
      stream: Type.Optional(Type.Boolean({ default: false })),
      prepend_bos: Type.Optional(Type.Boolean({ description: PREPEND_BOS })),
      top_logprobs: Type.Optional(
        Type.Integer({
          minimum: 0,
          maximum: 20,
          description: 'each token then carries this many of the most likely tokens at its position, with logprobs',
        }),
      ),
      messages: Type.Optional(messagesSchema),
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
    const {
      stream: _s,
      compare,
      prepend_bos: _b,
      interventions: _i,
      prompt: _p,
      messages: _m,
      model,
      telemetry,
      ...sampling
    } = b;
    const base = withDefaults({ ...sampling, ...generatePrompt(svc, b) });
    checkLimits(svc, base.max_new_tokens);
    const preset = await presetOf(svc, model);
    const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions, preset);
    const req = { ...base, interventions, telemetry };
    // the control arms run in the same batches, with the same seed
    const arms = (compare === true ? ['baseline' as const] : Array.isArray(compare) ? compare : []).map((arm) => {
      const run = controlArm(arm, interventions, applied, req.seed);
      return { arm, run, req: { ...req, interventions: run.interventions } };
    });
    const session = Session.open(svc, request, reply, [req, ...arms.map((a) => a.req)]);
    return session.serve(async () => {
      const stream = session.openStream(b.stream);
      // id -1: text held back (a stop-string prefix, part of a character) released at the end;
      // a token event's text is what the token released
      const onEvent = async (e: GenerateEvent, token?: ApiToken) => {
        if (e.type !== 'token') return;
        if (token) await session.send({ event: 'token', data: token });
        else if (e.text) await session.send({ event: 'text', data: { text: e.text } });
      };
      const steered = session.collect(req, stream ? onEvent : undefined, stream);
      const controls = arms.map((a) => ({ ...a, result: session.collect(a.req) }));
      const [result] = await session.all([steered]);
      const arm = async (name: Arm) => {
        const c = controls.find((x) => x.arm === name);
        if (!c) return undefined;
        return { ...completionOf(await c.result), ...(c.run.vectors && { vectors: c.run.vectors }) };
      };
      const [baseline, negated, random] = await Promise.all([arm('baseline'), arm('negated'), arm('random')]);
      const rec = await receiptOf(
        svc,
        interventions,
        applied,
        [{ req, output: result.tokens.map((t) => t.id) }],
        preset?.name,
      );
      const body = {
        id: `gen-${randomUUID()}`,
        model: preset?.name ?? svc.model.name,
        ...completionOf(result),
        seed: result.done.seed,
        timings: result.done.timings,
        interventions: applied,
        ...(baseline && { baseline }),
        ...((negated || random) && { controls: { ...(negated && { negated }), ...(random && { random }) } }),
        receipt: rec,
      };
      if (stream) {
        const { tokens: _, ...rest } = body;
        return session.close({ event: 'done', data: rest });
      }
      return body;
    });
  }
};

export default generateRoutes;
