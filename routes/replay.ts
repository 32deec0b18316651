import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { checkReplayLimits, firstDivergence, receiptSchema, requestOf } from '../src/api/receipt.js';
import { errorResponses, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { Session } from '../src/api/session.js';
import type { GenerateEvent } from '../src/engine/types.js';

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

/** A run's generated token ids (their text is not needed). */
async function tokenIds(events: AsyncIterable<GenerateEvent>): Promise<number[]> {
  const ids: number[] = [];
  for await (const e of events) if (e.type === 'token' && e.id >= 0) ids.push(e.id);
  return ids;
}

const replayRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post('/v1/replay', { schema }, async (request, reply) => {
    const r = request.body.receipt;
    checkReplayLimits(svc, r);
    const where = (i: number) => `receipt.runs[${i}]`;
    // every run checked (model, graph, vectors) before anything runs
    const reqs = await Promise.all(r.runs.map((run, i) => requestOf(svc, r, run, where(i))));
    const session = Session.open(svc, request, reply, reqs, where);
    return session.serve(async () => {
      const got = await session.all(reqs.map((req) => session.run(req, tokenIds)));
      const runs = got.map((tokens, i) => {
        const first_divergence = firstDivergence(r.runs[i].output, tokens);
        return { identical: first_divergence === null, first_divergence, tokens };
      });
      return { ...runs[0], identical: runs.every((x) => x.identical), runs };
    });
  });
};

export default replayRoutes;
