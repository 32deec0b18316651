import { randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { completionOf, completionProperties } from '../src/api/completion.js';
import { checkLimits, type SchemaRequest, streamErrors } from '../src/api/generation.js';
import { presetOf } from '../src/api/presets.js';
import { promptIds, stopList } from '../src/api/prompt.js';
import { keepValues, type RunRecord, receipt, receiptSchema, runRecord } from '../src/api/receipt.js';
import { type AppliedIntervention, resolveInterventions } from '../src/api/resolve.js';
import {
  errorResponses,
  interventionSchema,
  modelField,
  Nullable,
  opSchema,
  PREPEND_BOS,
  positionsSchema,
  Ref,
  samplingProperties,
  siteSchema,
  unitSchema,
} from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { Session } from '../src/api/session.js';
import { type ResolvedRequest, withDefaults } from '../src/engine/defaults.js';
import { UnprocessableError } from '../src/errors.js';

const cellSchema = Type.Partial(
  Type.Object({
    layer: Type.Integer(),
    coeff: Type.Number(),
    seed: Type.Integer(),
    ...completionProperties,
    intervention: Type.Partial(Type.Object({ applied_coeff: Type.Number(), applied_norm: Type.Number() })),
  }),
);

const schema = {
  tags: ['generation'],
  summary: 'Dose–response: one vector at several layers × coefficients (× seeds), in one batched call',
  description:
    "Runs one generation per cell of layers × coeffs × seeds, each with the one intervention `{vector, layer, coeff, unit, positions}` and that seed, all admitted together so that they share batches; a cell's tokens are those of a `/v1/generate` with the same intervention and seed. With `telemetry` (default true) each cell reports the mean and largest KL from its unsteered twin, the top-1 flips and the logprob delta. `baseline` is the unsteered completion (the first seed); with a preset as `model`, every cell and the baseline run its interventions first. `stream: true` sends a `cell` event as each cell finishes, then `done`. In Redis mode every cell is a job of its own, picked up by any worker.",
  body: Type.Object(
    {
      model: modelField,
      prompt: Type.String({ minLength: 1 }),
      vector: interventionSchema.properties.vector,
      layers: Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, maxItems: 64, uniqueItems: true }),
      coeffs: Type.Array(Type.Number(), { minItems: 1, maxItems: 256 }),
      unit: Type.Optional(unitSchema),
      positions: Type.Optional(positionsSchema),
      site: Type.Optional(siteSchema),
      op: Type.Optional(opSchema),
      seeds: Type.Optional(
        Type.Array(Type.Integer({ minimum: 0 }), {
          minItems: 1,
          maxItems: 64,
          description: 'one cell per seed for each layer and coeff; default: [seed], drawn when absent',
        }),
      ),
      ...samplingProperties,
      telemetry: Type.Optional(Type.Boolean({ default: true })),
      stream: Type.Optional(Type.Boolean({ default: false })),
      prepend_bos: Type.Optional(Type.Boolean({ description: PREPEND_BOS })),
    },
    { additionalProperties: false },
  ),
  response: {
    200: Type.Partial(
      Type.Object({
        id: Type.String(),
        model: Type.String(),
        vector: Type.Partial(Type.Object({ name: Nullable(Type.String()), hash: Type.String() })),
        baseline: Type.Partial(Type.Object({ ...completionProperties, seed: Type.Integer() })),
        cells: Type.Array(cellSchema),
        receipt: Ref(receiptSchema),
      }),
      { description: 'Every cell (or, with `stream: true`, a text/event-stream of `cell` events, then `done`).' },
    ),
    ...errorResponses,
  },
};

interface Cell {
  layer: number;
  coeff: number;
  seed: number;
  req: ResolvedRequest;
  /** The preset's interventions, if any, then the swept one (last). */
  applied: AppliedIntervention[];
}

const sweepRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  app.post('/v1/sweep', { sse: 'manual', schema }, streamErrors(handle));

  async function handle(request: SchemaRequest<typeof schema>, reply: FastifyReply) {
    const b = request.body;
    const { prompt, vector, layers, coeffs, unit, positions, site, op, seeds: given, telemetry = true } = b;
    const { stream: _st, prepend_bos, model, ...sampling } = b;
    // one seed drawn for the request when none is given
    const base = withDefaults({
      max_new_tokens: sampling.max_new_tokens,
      temperature: sampling.temperature,
      top_k: sampling.top_k,
      top_p: sampling.top_p,
      frequency_penalty: sampling.frequency_penalty,
      presence_penalty: sampling.presence_penalty,
      seed: given?.[0] ?? sampling.seed,
      stop: stopList(sampling.stop),
      prompt: promptIds(svc, prompt, prepend_bos),
    });
    checkLimits(svc, base.max_new_tokens);
    const seeds = given ?? [base.seed];
    const count = layers.length * coeffs.length * seeds.length;
    const max = svc.config.limits.maxSweepCells;
    if (count > max)
      throw new UnprocessableError(
        `${layers.length} layers × ${coeffs.length} coeffs × ${seeds.length} seeds = ${count} cells, more than this server's limit of ${max} (STEERD_MAX_SWEEP_CELLS)`,
        { cells: count, max_sweep_cells: max },
      );
    // every cell resolved (and so validated) before anything runs
    // with a preset as the model: its interventions in every cell and in the baseline, the swept one last
    const preset = await presetOf(svc, model);
    const presetOnly = await resolveInterventions(svc, [], preset);
    const cells: Cell[] = [];
    for (const layer of layers) {
      for (const coeff of coeffs) {
        const resolved = await resolveInterventions(svc, [{ vector, layer, coeff, unit, positions, site, op }], preset);
        for (const seed of seeds)
          cells.push({
            layer,
            coeff,
            seed,
            req: { ...base, seed, interventions: resolved.engine, telemetry },
            applied: resolved.applied,
          });
      }
    }
    const baselineReq: ResolvedRequest = { ...base, seed: seeds[0], interventions: presetOnly.engine };
    // admitted together: the cells share the engine's batches
    const session = Session.open(svc, request, reply, [baselineReq, ...cells.map((c) => c.req)]);
    return session.serve(async () => {
      const stream = session.openStream(b.stream);
      const baseline = session.collect(baselineReq);
      const results = cells.map(async (c, index) => {
        const r = await session.collect(c.req);
        const cell = {
          layer: c.layer,
          coeff: c.coeff,
          seed: c.seed,
          ...completionOf(r),
          intervention: {
            applied_coeff: c.applied.at(-1)!.applied_coeff,
            applied_norm: c.applied.at(-1)!.applied_norm,
          },
        };
        if (stream) await session.send({ event: 'cell', data: { index, ...cell } });
        return { cell, ids: r.tokens.map((t) => t.id) };
      });
      const [base0, done] = await Promise.all([baseline, Promise.all(results)]);
      session.checkTime();
      const first = cells[0];
      await keepValues(svc, first.req.interventions!, first.applied);
      const runs: RunRecord[] = [
        runRecord(
          baselineReq,
          presetOnly.applied,
          base0.tokens.map((t) => t.id),
        ),
        ...cells.map((c, i) => runRecord(c.req, c.applied, done[i].ids)),
      ];
      const body = {
        id: `sweep-${randomUUID()}`,
        model: preset?.name ?? svc.model.name,
        vector: { name: first.applied.at(-1)!.vector, hash: first.applied.at(-1)!.hash },
        baseline: { ...completionOf(base0), seed: seeds[0] },
        cells: done.map((d) => d.cell),
        receipt: receipt(svc, runs, preset?.name),
      };
      if (stream) {
        const { cells: _c, ...rest } = body;
        return session.close({ event: 'done', data: rest });
      }
      return body;
    });
  }
};

export default sweepRoutes;
