import { NAME_PATTERN } from '../config.js';

/** JSON Schemas shared by the routes (they also make `openapi.yaml`). */

export const errorSchema = {
  $id: 'Error',
  type: 'object',
  description: 'Every error has this shape.',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'stable machine-readable code' },
        message: { type: 'string', description: 'what went wrong, naming the limit or field' },
        details: { type: 'object', additionalProperties: true },
      },
    },
  },
} as const;

const numbers = { type: 'array', items: { type: 'number' }, minItems: 1 } as const;

export const vectorValuesSchema = {
  description: 'A direction number[H], or a sequence number[k][H] (ActAdd).',
  oneOf: [numbers, { type: 'array', items: numbers, minItems: 1 }],
} as const;

export const interventionSchema = {
  $id: 'Intervention',
  type: 'object',
  additionalProperties: false,
  required: ['vector', 'layer', 'coeff'],
  properties: {
    vector: {
      description: 'A stored vector by name, or inline values.',
      oneOf: [
        { type: 'string', pattern: NAME_PATTERN },
        {
          type: 'object',
          additionalProperties: false,
          required: ['values'],
          properties: { values: vectorValuesSchema },
        },
      ],
    },
    layer: {
      type: 'integer',
      minimum: 0,
      description: 'hook point: the residual stream entering block `layer` (n_layer: before ln_f)',
    },
    coeff: { type: 'number', description: 'the vector is multiplied by this before it is added' },
    positions: {
      type: 'string',
      enum: ['all', 'prompt', 'generated', 'front'],
      description: 'where it is added; default: all for a direction, front (first k prompt positions) for a sequence',
    },
  },
} as const;

export const samplingProperties = {
  max_new_tokens: { type: 'integer', minimum: 1, default: 64 },
  temperature: { type: 'number', minimum: 0, default: 1, description: '0 is greedy' },
  top_k: { type: 'integer', minimum: 0, default: 0, description: '0 keeps every token' },
  top_p: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 1 },
  frequency_penalty: { type: 'number', minimum: -2, maximum: 2, default: 0 },
  presence_penalty: { type: 'number', minimum: -2, maximum: 2, default: 0 },
  seed: {
    type: 'integer',
    description: 'the same seed gives the same tokens; drawn at random (and reported) when absent',
  },
  stop: {
    description: 'stop before the first of these strings',
    oneOf: [
      { type: 'string', minLength: 1 },
      { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 16 },
    ],
  },
} as const;

export const tokenSchema = {
  type: 'object',
  properties: { id: { type: 'integer' }, text: { type: 'string' }, logprob: { type: 'number' } },
} as const;
