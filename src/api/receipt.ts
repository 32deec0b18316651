import { readFileSync } from 'node:fs';
import { type Static, Type } from 'typebox';
import type { ResolvedRequest } from '../engine/defaults.js';
import type { GenerateRequest, Intervention } from '../engine/types.js';
import { MAX_STOP } from '../engine/validate.js';
import { GoneError, UnprocessableError } from '../errors.js';
import { checkAdmissible } from './generation.js';
import type { AppliedIntervention } from './resolve.js';
import { opSchema, StringEnum, siteSchema, unitSchema } from './schemas.js';
import type { Service } from './service.js';

/**
 * Receipts (docs/architecture.md §4): what a generation ran — steerd's version, the model and a hash of its
 * serving graph, every run's request as it ran (prompt ids, every sampling parameter with the seed,
 * the interventions by vector hash with the coefficient actually applied) and its output ids — so
 * that `/v1/replay` can run it again and say whether the same tokens come out. Determinism holds
 * for the same model, graph, provider and hardware (batch invariance makes the neighbours
 * irrelevant); another CPU, thread count or provider may round differently.
 */

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const int = (o = {}) => Type.Integer(o);
const hashSchema = Type.String({ pattern: '^[0-9a-f]{64}$' });

export const runRecordSchema = Type.Object(
  {
    prompt: Type.Array(int({ minimum: 0 }), { minItems: 1, description: 'prompt token ids' }),
    max_new_tokens: int({ minimum: 0, description: "0: the prompt's pass alone (a score-only run)" }),
    temperature: Type.Number({ minimum: 0 }),
    top_k: int({ minimum: 0 }),
    top_p: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
    frequency_penalty: Type.Number({ minimum: -2, maximum: 2 }),
    presence_penalty: Type.Number({ minimum: -2, maximum: 2 }),
    seed: int({ minimum: 0 }),
    stop: Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP + 1 }),
    stop_at_eos: Type.Boolean(),
    telemetry: Type.Boolean(),
    interventions: Type.Array(
      Type.Object(
        {
          hash: hashSchema,
          shape: Type.Array(int({ minimum: 1 }), { minItems: 1, maxItems: 2 }),
          layer: int({ minimum: 0 }),
          site: siteSchema,
          op: opSchema,
          unit: unitSchema,
          coeff: Type.Number(),
          applied_coeff: Type.Number({ description: 'what multiplied the stored values: replay uses it' }),
          positions: StringEnum(['all', 'prompt', 'generated', 'front']),
        },
        { additionalProperties: false },
      ),
    ),
    output: Type.Array(int({ minimum: 0 }), { description: 'generated token ids' }),
  },
  { additionalProperties: false },
);

export const receiptSchema = Type.Object(
  {
    steerd: Type.String({ description: "steerd's version" }),
    model: Type.Object(
      {
        id: Type.String(),
        architecture: Type.Optional(Type.String({ description: 'the model family (`gpt2`, `llama`)' })),
        model_type: Type.Optional(Type.String({ description: "config.json's `model_type`" })),
        fingerprint: Type.String({ description: "the checkpoint's: config.json and its weights files' headers" }),
        graph_hash: hashSchema,
      },
      { additionalProperties: false },
    ),
    preset: Type.Optional(
      Type.String({
        description:
          "the preset the request named as its model: each run's interventions begin with its interventions, as they were then (replay runs them by hash, whatever became of the preset)",
      }),
    ),
    runs: Type.Array(runRecordSchema, { minItems: 1 }),
  },
  {
    $id: 'Receipt',
    additionalProperties: false,
    description: 'What ran, to be run again by POST /v1/replay.',
  },
);

export type RunRecord = Static<typeof runRecordSchema>;
export type Receipt = Static<typeof receiptSchema>;

/** One run as it ran: the engine request (every default applied), the interventions as applied, the output ids. */
export function runRecord(req: ResolvedRequest, applied: AppliedIntervention[], output: number[]): RunRecord {
  return {
    prompt: req.prompt,
    max_new_tokens: req.max_new_tokens,
    temperature: req.temperature,
    top_k: req.top_k,
    top_p: req.top_p,
    frequency_penalty: req.frequency_penalty,
    presence_penalty: req.presence_penalty,
    seed: req.seed,
    stop: req.stop,
    stop_at_eos: req.stop_at_eos,
    telemetry: req.telemetry ?? false,
    interventions: applied.map((a) => ({
      hash: a.hash,
      shape: a.shape,
      layer: a.layer,
      site: a.site,
      op: a.op,
      unit: a.unit,
      coeff: a.coeff,
      applied_coeff: a.applied_coeff,
      positions: a.positions,
    })),
    output,
  };
}

/**
 * The receipt of runs that share one list of interventions, their inline and preset values kept
 * first (keepValues): what /v1/generate, /v1/completions and /v1/chat/completions answer with.
 */
export async function receiptOf(
  svc: Service,
  engine: Intervention[],
  applied: AppliedIntervention[],
  runs: { req: ResolvedRequest; output: number[] }[],
  preset?: string,
): Promise<Receipt> {
  await keepValues(svc, engine, applied);
  return receipt(
    svc,
    runs.map((r) => runRecord(r.req, applied, r.output)),
    preset,
  );
}

export function receipt(svc: Service, runs: RunRecord[], preset?: string): Receipt {
  const info = svc.engine.info;
  return {
    steerd: pkg.version,
    model: {
      id: svc.model.id,
      architecture: info.architecture,
      model_type: info.model_type,
      fingerprint: info.fingerprint,
      graph_hash: info.graph_hash,
    },
    ...(preset !== undefined && { preset }),
    runs,
  };
}

/**
 * Keeps the values of the inline vectors and preset interventions a response names, so that its
 * receipt can be replayed after the preset changes or goes (registered vectors are kept by the
 * store; deleted ones for a while).
 */
export async function keepValues(svc: Service, engine: Intervention[], applied: AppliedIntervention[]): Promise<void> {
  await Promise.all(
    applied.map((a, i) =>
      a.vector === null || a.preset !== undefined ? svc.store.putValues(a.hash, a.shape, engine[i].values) : undefined,
    ),
  );
}

/**
 * Holds a replay to the limits of the routes whose runs it repeats, before anything is fetched or
 * run (422 naming the limit and the run): each run's max_new_tokens and interventions; a sweep's
 * runs (a baseline, then cells whose interventions differ from it) at most the cells a sweep may
 * have; and no more runs than the server admits at once.
 */
export function checkReplayLimits(svc: Service, r: Receipt): void {
  const { maxNewTokens, maxInterventions, maxSweepCells } = svc.config.limits;
  for (const [i, run] of r.runs.entries()) {
    if (run.max_new_tokens > maxNewTokens)
      throw new UnprocessableError(
        `receipt.runs[${i}].max_new_tokens (${run.max_new_tokens}) exceeds this server's limit (${maxNewTokens}, STEERD_MAX_NEW_TOKENS)`,
        { run: i, max_new_tokens: maxNewTokens },
      );
    if (run.interventions.length > maxInterventions)
      throw new UnprocessableError(
        `receipt.runs[${i}].interventions: ${run.interventions.length} interventions exceed this server's limit (${maxInterventions}, STEERD_MAX_INTERVENTIONS)`,
        { run: i, max_interventions: maxInterventions },
      );
  }
  // runs that share their interventions are what /v1/completions runs (prompts × n, bounded by
  // the queue depth alone); runs whose interventions differ, only a sweep's cells
  const first = JSON.stringify(r.runs[0].interventions);
  const cells = r.runs.length - 1;
  if (cells > maxSweepCells && r.runs.some((run) => JSON.stringify(run.interventions) !== first))
    throw new UnprocessableError(
      `receipt.runs: a sweep's ${r.runs.length} runs (a baseline and ${cells} cells) are more than this server's limit (${maxSweepCells}, STEERD_MAX_SWEEP_CELLS)`,
      { cells, max_sweep_cells: maxSweepCells },
    );
  checkAdmissible(svc, r.runs.length, 'receipt.runs');
}

/** A receipt's run as an engine request, its vectors fetched by hash (410 when they are gone). */
export async function requestOf(svc: Service, r: Receipt, run: RunRecord, where: string): Promise<GenerateRequest> {
  const info = svc.engine.info;
  if (r.model.id !== svc.model.id || r.model.graph_hash !== info.graph_hash) {
    throw new UnprocessableError(
      `the receipt was made with model ${r.model.id} (serving graph ${r.model.graph_hash.slice(0, 12)}); this server runs ${svc.model.id} (serving graph ${info.graph_hash.slice(0, 12)})`,
      { receipt_model: r.model.id, model: svc.model.id },
    );
  }
  const interventions: Intervention[] = [];
  for (const [i, iv] of run.interventions.entries()) {
    const got = await svc.store.getValues(iv.hash);
    if (!got)
      throw new GoneError(`${where}.interventions[${i}]: the values of vector ${iv.hash} are no longer kept`, {
        hash: iv.hash,
      });
    if (got.shape.join('x') !== iv.shape.join('x'))
      throw new UnprocessableError(
        `${where}.interventions[${i}]: vector ${iv.hash} has shape [${got.shape}], not [${iv.shape}]`,
      );
    interventions.push({
      values: got.values,
      rows: iv.shape.length === 1 ? 1 : iv.shape[0],
      layer: iv.layer,
      site: iv.site,
      op: iv.op,
      coeff: iv.applied_coeff,
      positions: iv.positions,
      hash: iv.hash,
    });
  }
  const { output: _o, interventions: _i, ...sampling } = run;
  return { ...sampling, interventions };
}

/** Where two token sequences first differ (a length difference counts), or null. */
export function firstDivergence(a: number[], b: number[]): number | null {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return null;
}
