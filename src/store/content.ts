import { createHash } from 'node:crypto';
import { SteerdError } from '../errors.js';
import { l2norm } from '../util/vec.js';
import { decodePreset, type StoredPreset } from './presets.js';
import type { VectorMeta } from './types.js';

/**
 * A vector's content: its hash (its identity), the checks that values are what their hash says,
 * and what its values alone decide of its record. Every store keyed by content uses these.
 */

/** Content hash of a vector: shape and little-endian float32 bytes. */
export function vectorHash(shape: number[], values: Float32Array): string {
  return createHash('sha256')
    .update(shape.join('x'))
    .update(Buffer.from(values.buffer, values.byteOffset, values.byteLength))
    .digest('hex');
}

/** Whether `s` has the form of a content hash (64 lowercase hex digits): checked before a hash names a file or a key. */
export function isVectorHash(s: unknown): s is string {
  return typeof s === 'string' && /^[0-9a-f]{64}$/.test(s);
}

/**
 * Refuses (throws) values that are not what `hash` says they are: a malformed hash, a shape that is
 * not 1 to 8 positive integers covering the values, or values of another content hash. A store
 * keyed by content must not hold anything else under a hash.
 */
export function checkValues(hash: string, shape: number[], values: Float32Array): void {
  if (!isVectorHash(hash)) throw new Error(`not a vector hash: ${JSON.stringify(hash).slice(0, 80)}`);
  if (
    !Array.isArray(shape) ||
    shape.length < 1 ||
    shape.length > 8 ||
    !shape.every((d) => Number.isInteger(d) && d > 0 && d < 2 ** 32) ||
    shape.reduce((a, b) => a * b, 1) !== values.length
  )
    throw new Error(`shape ${JSON.stringify(shape)} does not describe ${values.length} values`);
  if (vectorHash(shape, values) !== hash) throw new Error(`values do not have the hash ${hash}`);
}

/** A stored preset read back, its pinned values checked against their hashes (a damaged record: 500). */
export function readPreset(text: string): StoredPreset {
  const p = decodePreset(text);
  for (const [i, iv] of p.interventions.entries()) {
    try {
      checkValues(iv.hash, iv.shape, p.values[i] ?? new Float32Array());
    } catch (e) {
      throw new SteerdError(
        `preset "${p.name}": the values of interventions[${i}] are damaged (${(e as Error).message})`,
        500,
        'internal',
      );
    }
  }
  return p;
}

/** What a vector's values decide of its record: its kind, its shape, its L2 norm and its content hash. */
export function describe(values: Float32Array, shape: number[]): Pick<VectorMeta, 'kind' | 'norm' | 'hash' | 'shape'> {
  return {
    kind: shape.length === 1 ? 'direction' : 'sequence',
    shape,
    norm: l2norm(values),
    hash: vectorHash(shape, values),
  };
}
