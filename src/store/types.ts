import { SteerdError } from '../errors.js';
import type { Site } from '../model/hooks.js';
import type { StoredPreset } from './presets.js';

/**
 * What every vector store is: the records, their typed errors, how long values stay retrievable by
 * hash, and the interface the file store (file-vectors.ts) and the Redis registry (redis-vectors.ts)
 * implement.
 */

/** The model a vector was made for: used vectors must match the serving model. */
export interface VectorModel {
  id: string;
  n_embd: number;
}

export interface VectorMeta {
  name: string;
  /** `direction` ([H]) or `sequence` ([k, H]). */
  kind: 'direction' | 'sequence';
  shape: number[];
  /** Suggested hook point (the recipe's layer, or given on upload). */
  layer: number | null;
  /** The hook site it was made at (a recipe's) or given on upload; an intervention without a site uses it. Absent: resid_pre. */
  site?: Site;
  /** Pair recipes: the mean cosine between each pair's difference and the mean difference. */
  pair_consistency?: number;
  /** L2 norm of all values. */
  norm: number;
  /** sha256 of the shape and the float32 values: the vector's identity. */
  hash: string;
  /** How it was made: the recipe, or `"uploaded"`. */
  recipe: unknown;
  model: VectorModel;
  description: string | null;
  created_at: string;
}

export interface StoredVector extends VectorMeta {
  values: Float32Array;
}

export class NotFoundError extends SteerdError {
  constructor(name: string) {
    super(`no vector named "${name}"`, 404, 'not_found', { name });
  }
}

export class ConflictError extends SteerdError {
  constructor(name: string) {
    super(`a vector named "${name}" exists (PUT /v1/vectors/${name} replaces it)`, 409, 'conflict', { name });
  }
}

export class LimitError extends SteerdError {
  constructor(max: number) {
    super(`the store holds its maximum of ${max} vectors; delete one first`, 422, 'limit', { max });
  }
}

/**
 * Seconds that values stay retrievable by content hash after their last `putValues`, or after the
 * name that held them was deleted or replaced: a week. Receipts name vectors by hash, and a receipt
 * stays replayable for at least a week after its last use (long enough to re-check a result over a
 * weekend or from a colleague's report), without keeping every inline vector ever sent forever.
 * Registered vectors' values are kept for as long as they are registered, whatever their age.
 */
export const VALUES_TTL_S = 7 * 24 * 3600;

/** Where vectors live; the file store and the Redis registry implement it. */
export interface VectorStore {
  list(): Promise<VectorMeta[]>;
  get(name: string): Promise<StoredVector>;
  /** Stores a vector; refuses an existing name unless `replace`. */
  put(v: StoredVector, opts: { replace: boolean; max: number }): Promise<void>;
  delete(name: string): Promise<void>;
  /**
   * Keeps these values under their content hash (`hash` = vectorHash(shape, values)) for at least
   * VALUES_TTL_S after this call, whether or not a name refers to them: what a receipt names can be
   * replayed. Refuses (rejects) values that do not match the hash.
   */
  putValues(hash: string, shape: number[], values: Float32Array): Promise<void>;
  /**
   * The values with this content hash: a registered vector's, or ones kept by putValues (or by a
   * recent delete/replace), else null (also for a malformed hash, and for kept values that no longer
   * match their hash).
   */
  getValues(hash: string): Promise<{ shape: number[]; values: Float32Array } | null>;
  /** Every preset of the model `modelId` (with its pinned values), by name (presets.ts: kept per model). */
  listPresets(modelId: string): Promise<StoredPreset[]>;
  /** The preset `name` of the model `modelId` (404 when it has none of that name). */
  getPreset(modelId: string, name: string): Promise<StoredPreset>;
  /**
   * Stores a preset among its model's (`p.model.id`); refuses a name that model has unless
   * `replace` (409), a new one beyond `max` presets of that model (422).
   */
  putPreset(p: StoredPreset, opts: { replace: boolean; max: number }): Promise<void>;
  deletePreset(modelId: string, name: string): Promise<void>;
  /** Whether the store answers (readiness); absent = always. */
  ping?(): Promise<boolean>;
  close?(): Promise<void>;
}
