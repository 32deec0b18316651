import { createHash } from 'node:crypto';
import { NAME_PATTERN } from '../config.js';
import type { Op, Positions } from '../engine/types.js';
import { SteerdError } from '../errors.js';
import type { Site } from '../model/hooks.js';

/**
 * Presets: named steering configurations, kept in the vector registry beside the vectors. A preset
 * pins its vectors by content: it holds the values it was made with (and their hashes), so that
 * deleting or replacing a vector it was made from changes nothing about it.
 */

/** One intervention of a preset, as resolved at creation (the vector by hash, its site decided). */
export interface PresetIntervention {
  /** The name the vector had when the preset was made (null: inline values or a hash); informational. */
  vector: string | null;
  /** Content hash of the pinned values: the vector's identity. */
  hash: string;
  shape: number[];
  layer: number;
  site: Site;
  op: Op;
  /** As given (ablate: 0). */
  coeff: number;
  unit: 'absolute' | 'resid_norm';
  positions: Positions;
}

export interface PresetMeta {
  name: string;
  description: string | null;
  interventions: PresetIntervention[];
  /** The model it was made for (as a vector's `model`): used only on that model. */
  model: { id: string; n_embd: number };
  created_at: string;
}

/** A preset with its pinned values, one per intervention. */
export interface StoredPreset extends PresetMeta {
  values: Float32Array[];
}

const namePattern = new RegExp(NAME_PATTERN);

/**
 * Whether `name` can name a preset (NAME_PATTERN: no separators, no leading dot). The file store
 * keeps a preset in a file of its name, so nothing else may reach it.
 */
export const isPresetName = (name: string): boolean => namePattern.test(name);

/**
 * Presets are kept per model: a name is unique among one model's presets (`model.id`), and a
 * registry shared by servers of different models keeps each model's apart, so that a server sees,
 * replaces and deletes its own model's presets only, and two models may each have a preset of the
 * same name. The stores key them by this digest of the model's id (a file name, a Redis key part).
 */
export const presetScope = (modelId: string): string => createHash('sha256').update(modelId).digest('hex').slice(0, 32);

export class PresetNotFoundError extends SteerdError {
  constructor(name: string) {
    super(`no preset named "${name}"`, 404, 'not_found', { preset: name });
  }
}

export class PresetConflictError extends SteerdError {
  constructor(name: string) {
    super(`a preset named "${name}" exists (PUT /v1/presets/${name} replaces it)`, 409, 'conflict', { preset: name });
  }
}

export class PresetLimitError extends SteerdError {
  constructor(max: number) {
    super(`the store holds its maximum of ${max} presets; delete one first`, 422, 'limit', { max });
  }
}

/** A preset as stored: its fields, and each intervention's float32 values in base64. */
export function encodePreset(p: StoredPreset): string {
  const { values, ...meta } = p;
  return JSON.stringify({
    ...meta,
    values_f32: values.map((v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')),
  });
}

/** A stored preset read back (its values not yet checked against their hashes: the stores do). */
export function decodePreset(text: string): StoredPreset {
  const { values_f32, ...meta } = JSON.parse(text) as PresetMeta & { values_f32: string[] };
  const values = values_f32.map((b64) => {
    const b = Buffer.from(b64, 'base64');
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  });
  return { ...meta, values };
}

/** A preset's fields without its values (what lists show). */
export const presetMeta = ({ values: _, ...meta }: StoredPreset): PresetMeta => meta;
