import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { collect } from '../src/api/completion.js';
import { admit, requestSignal, timeoutError, tracked } from '../src/api/generation.js';
import { firstDivergence, receiptSchema, requestOf } from '../src/api/receipt.js';
import { errorResponses, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';

const runResult = {
  identical: Type.Boolean(),
  first_divergence: Type.Union([Type.Integer(), Type.Null()], {
    description: 'the first output index where the tokens differ (a length difference counts), or null',
  }),
  tokens: Type.Array(Type.Integer(), { description: 'the token ids of the run again' }),
};

const schema = {
  tags: ['generation'],
  summary: 'Run a receipt again and compare its tokens',
  description:
    'Runs every run of a receipt (from `/v1/generate`, `/v1/sweep` or `/v1/completions`) again, with its prompt ids, sampling parameters, seed and interventions (by vector hash, with the coefficients as applied), and compares the tokens: `identical` when every run gave its tokens again; `first_divergence` and `tokens` are those of the first run (a `/v1/generate` receipt has one run), `runs` has each. Determinism holds on the same model, serving graph, provider and hardware, whatever shares the batch; another CPU, thread count or provider may round differently. A receipt for another model or graph gets 422; one whose vector values are no longer kept, 410.',
  body: Type.Object({ receipt: Ref(receiptSchema) }, { additionalProperties: false }),
  response: {
    200: Type.Object({
      ...runResult,
      runs: Type.Array(Type.Object({ ...runResult })),
    }),
    ...errorResponses,
  },
};

const replayRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post('/v1/replay', { schema }, async (request, reply) => {
    const r = request.body.receipt;
    // every run checked (model, graph, vectors) before anything runs
    const reqs = await Promise.all(r.runs.map((run, i) => requestOf(svc, r, run, `receipt.runs[${i}]`)));
    const release = admit(svc, reqs.length);
    const sig = requestSignal(svc, request, reply);
    try {
      const got = await Promise.all(
        reqs.map((req) => collect(svc, tracked(svc, req, svc.engine.generate(req, { signal: sig.signal })))),
      );
      if (sig.timedOut()) throw timeoutError(svc);
      const runs = got.map((g, i) => {
        const tokens = g.tokens.map((t) => t.id);
        const first_divergence = firstDivergence(r.runs[i].output, tokens);
        return { identical: first_divergence === null, first_divergence, tokens };
      });
      return { ...runs[0], identical: runs.every((x) => x.identical), runs };
    } finally {
      sig.done();
      release();
    }
  });
};

export default replayRoutes;
