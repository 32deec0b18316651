import {
  type Static,
  type TObject,
  type TSchema,
  type TSchemaOptions,
  type TUnion,
  type TUnknown,
  Type,
} from 'typebox';
import { NAME_PATTERN } from '../config.js';
import { SAMPLING_DEFAULTS as D } from '../engine/defaults.js';
import type { FinishReason, Op, Positions, SamplingParams } from '../engine/types.js';
import { MAX_STOP } from '../engine/validate.js';
import { SITES, type Site } from '../model/hooks.js';

/**
 * JSON Schemas shared by the routes, written with TypeBox: the routes' TypeScript types are derived
 * from them (`Static`, or the TypeBox type provider), and they also make `openapi.yaml`.
 */

/** `true` where A and B are the same type (the same keys, each as optional and of the same type). */
export type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/**
 * Compiles only with `true`: `type _ = Agrees<Same<RouteType, EngineType>>` stops the build where a
 * route schema and the engine type it feeds have drifted apart.
 */
export type Agrees<T extends true> = T;

/** `oneOf` (TypeBox's Union writes `anyOf`): exactly one of `types` matches; typed as their union. */
export const OneOf = <T extends TSchema[]>(types: [...T], options: TSchemaOptions = {}) =>
  Type.Unsafe<Static<TUnion<T>>>({ ...options, oneOf: types });

/** `{type: 'string', enum}` (TypeBox's Enum leaves out `type`), typed as the union of `values`. */
export const StringEnum = <const T extends string[]>(values: [...T], options: TSchemaOptions = {}) =>
  Type.Unsafe<T[number]>({ type: 'string', enum: values, ...options });

/** `schema` that also allows null, written `type: [type, 'null']` (OpenAPI 3.0: `nullable: true`). */
export const Nullable = <T extends TSchema & { type: string }>(schema: T) =>
  Type.Unsafe<Static<T> | null>({ ...schema, type: [schema.type, 'null'] });

/**
 * An object with any keys, each value matching `values` (`true`: any value); TypeBox's Record would
 * write `patternProperties`.
 */
export const Dictionary = <T extends TSchema = TUnknown>(values: T | true, options: TSchemaOptions = {}) =>
  Type.Unsafe<Record<string, Static<T>>>({ type: 'object', additionalProperties: values, ...options });

/**
 * A `$ref` to a schema added with `app.addSchema` (by its `$id`, so that `openapi.yaml` names it in
 * `components`), typed as that schema.
 */
export function Ref<T extends TSchema>(schema: T) {
  const id = (schema as { $id?: unknown }).$id;
  if (typeof id !== 'string') throw new Error('Ref: the schema has no $id');
  return Type.Unsafe<Static<T>>({ $ref: `${id}#` });
}

export const errorSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'stable machine-readable code' }),
      message: Type.String({ description: 'what went wrong, naming the limit or field' }),
      details: Type.Optional(Dictionary(true)),
    }),
  },
  { $id: 'Error', description: 'Every error has this shape.' },
);

/** The error responses every /v1 route declares. */
export const errorResponses = { '4xx': Ref(errorSchema), '5xx': Ref(errorSchema) };

const numbers = Type.Array(Type.Number(), { minItems: 1 });

export const vectorValuesSchema = OneOf([numbers, Type.Array(numbers, { minItems: 1 })], {
  description: 'A direction number[H], or a sequence number[k][H] (ActAdd).',
});

export const positionsSchema = StringEnum(['all', 'prompt', 'generated', 'front'], {
  description: 'where it is added; default: all for a direction, front (first k prompt positions) for a sequence',
});
type _Positions = Agrees<Same<Static<typeof positionsSchema>, Positions>>;

export const siteSchema = StringEnum([...SITES], {
  description:
    "hook site within the layer: resid_pre (the stream entering the block; TransformerLens hook_resid_pre), ln1 (ln_1's output, the attention's input: ln1.hook_normalized), attn_out (the attention's output projection: hook_attn_out), resid_mid (after the attention's residual add: hook_resid_mid), ln2 (ln_2's output, the MLP's input: ln2.hook_normalized), mlp_out (the MLP's output: hook_mlp_out)",
});
type _Site = Agrees<Same<Static<typeof siteSchema>, Site>>;

export const opSchema = StringEnum(['add', 'ablate', 'clamp'], {
  description:
    'add (default): + coeff × vector; ablate: x − (x·u)u, u the unit direction (coeff unused); clamp: x + (coeff − x·u)u. At one hook the adds come first, then ablations and clamps in request order; ablate and clamp take directions',
});
type _Op = Agrees<Same<Static<typeof opSchema>, Op>>;

export const unitSchema = StringEnum(['absolute', 'resid_norm'], {
  description:
    "`absolute` (default): coeff multiplies the stored values; `resid_norm`: the added vector's norm (a sequence: its largest row's) is coeff × the layer's median residual-stream norm",
});

export const interventionSchema = Type.Object(
  {
    vector: OneOf(
      [
        Type.String({ pattern: NAME_PATTERN }),
        Type.Object({ values: vectorValuesSchema }, { additionalProperties: false }),
        Type.Object(
          { hash: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'sha256 of the shape and float32 values' }) },
          { additionalProperties: false },
        ),
      ],
      {
        description:
          "A stored vector by name, inline values, or values by content hash (a vector's `hash`, or a receipt's: kept while registered or a week after their last use).",
      },
    ),
    layer: Type.Integer({
      minimum: 0,
      description:
        'the layer of the hook point: 0..n_layer for resid_pre (the residual stream entering block `layer`; n_layer: before ln_f), 0..n_layer − 1 at the other sites',
    }),
    site: Type.Optional(siteSchema),
    op: Type.Optional(opSchema),
    coeff: Type.Optional(
      Type.Number({
        description:
          'add: the vector is multiplied by this before it is added; clamp: the target of the projection; ablate: unused. With `unit: "resid_norm"` it counts the median norm at the hook point (`/v1/model`)',
      }),
    ),
    unit: Type.Optional(unitSchema),
    positions: Type.Optional(positionsSchema),
  },
  { $id: 'Intervention', additionalProperties: false },
);

/** A request's `model`: the base model or a preset, whose interventions then come first. */
export const modelField = Type.Optional(
  Type.String({
    description:
      "a preset (`/v1/presets`): its interventions are applied first, before the request's; the base model's name, id or hub name, or absent: none (anything else: 404 `model_not_found`)",
  }),
);

/** An intervention as the API receives it. */
export type InterventionBody = Static<typeof interventionSchema>;

/** A list of interventions, each by reference to `Intervention` (added to the app by its `$id`). */
export const interventionsSchema = Type.Array(Ref(interventionSchema));

export const samplingProperties = {
  max_new_tokens: Type.Optional(Type.Integer({ minimum: 1, default: D.max_new_tokens })),
  temperature: Type.Optional(Type.Number({ minimum: 0, default: D.temperature, description: '0 is greedy' })),
  top_k: Type.Optional(Type.Integer({ minimum: 0, default: D.top_k, description: '0 keeps every token' })),
  top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: D.top_p })),
  frequency_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: D.frequency_penalty })),
  presence_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: D.presence_penalty })),
  seed: Type.Optional(
    Type.Integer({ description: 'the same seed gives the same tokens; drawn at random (and reported) when absent' }),
  ),
  stop: Type.Optional(
    OneOf([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP })], {
      description: 'stop before the first of these strings',
    }),
  ),
};

// The engine's sampling parameters, but `stop` may also be one string; `stop_at_eos` is not the API's.
type Sampling = Static<TObject<typeof samplingProperties>>;
type _Sampling = Agrees<Same<Omit<Sampling, 'stop'>, Omit<SamplingParams, 'stop' | 'stop_at_eos'>>>;

export const finishReasonSchema = StringEnum(['length', 'eos', 'stop', 'cancelled']);
type _FinishReason = Agrees<Same<Static<typeof finishReasonSchema>, FinishReason>>;

export const tokenSchema = Type.Partial(
  Type.Object({
    id: Type.Integer(),
    text: Type.String(),
    logprob: Type.Number(),
    baseline_logprob: Type.Number({
      description: 'with telemetry: log p(token) under the unsteered model, same prefix',
    }),
    kl: Type.Number({ description: 'with telemetry: KL(steered ‖ unsteered) at the position that chose it, nats' }),
    top1_flip: Type.Boolean({ description: "with telemetry: the two distributions' most likely tokens differ" }),
    top_logprobs: Type.Array(Type.Object({ id: Type.Integer(), text: Type.String(), logprob: Type.Number() }), {
      description: 'with top_logprobs: the most likely tokens at this position, most likely first',
    }),
    projections: Type.Array(Nullable(Type.Number()), {
      description:
        "with telemetry: per intervention, the residual stream at its hook (after steering) at that position, dotted with the intervention's unit vector; null for a sequence",
    }),
  }),
);

export const telemetrySummarySchema = Type.Object(
  {
    mean_kl: Type.Number(),
    max_kl: Type.Number(),
    top1_flips: Type.Integer({ description: 'positions where the steered and unsteered argmaxes differ' }),
    logprob_delta: Type.Number({ description: 'Σ (logprob − baseline_logprob) over the generated tokens' }),
  },
  { description: 'with telemetry: totals over the generated tokens' },
);

/** What a preset keeps of an intervention: the vector by hash, its site, op, coefficient and unit. */
const resolvedIntervention = {
  vector: Nullable(Type.String({ description: "the vector's name, when it was named (null: values or a hash)" })),
  hash: Type.String({ description: 'content hash of the values' }),
  shape: Type.Array(Type.Integer()),
  layer: Type.Integer(),
  site: siteSchema,
  op: opSchema,
  coeff: Type.Number(),
  unit: unitSchema,
  positions: Type.String(),
};
export const presetInterventionSchema = Type.Partial(Type.Object(resolvedIntervention));

/** An intervention as applied, echoed back in responses: a preset's, and what was applied. */
export const appliedInterventionSchema = Type.Partial(
  Type.Object({
    ...resolvedIntervention,
    applied_coeff: Type.Number({ description: 'the multiplier applied to the stored values' }),
    applied_norm: Type.Number({ description: 'the norm of what was added (a sequence: its largest row)' }),
    preset: Type.String({ description: 'the preset it came from (its interventions come first)' }),
  }),
);

/** `prepend_bos`'s description: its default is the checkpoint's tokenizer's (Tokenizer.addBos). */
export const PREPEND_BOS =
  "Put the tokenizer's BOS token before the prompt. Default: as the checkpoint's tokenizer does (`/v1/model` `tokenizer.add_bos`): GPT-2 no, Llama 2 and 3 yes, Qwen2 no.";
