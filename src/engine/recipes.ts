import { BadRequestError } from '../errors.js';
import type { ActivationsRequest, ActivationsResult } from './types.js';

/**
 * Steering-vector recipes (DESIGN.md §4) as pure functions of residual-stream activations, plus
 * `deriveVector`, which reads the activations through any engine-like object.
 */

export interface Recipe {
  kind: 'diff' | 'actadd' | 'mean_diff';
  /** Hook point whose activations are read (0..n_layer). */
  layer: number;
  /** `diff` and `actadd`: the two prompts. */
  positive?: string;
  negative?: string;
  /** `mean_diff`: contrastive (positive, negative) prompt pairs. */
  pairs?: [string, string][];
  /** Scale the result to unit norm (a sequence: each row). Default false. */
  normalize?: boolean;
}

export interface DerivedVector {
  /** [H] for a direction, [k × H] row-major for a sequence. */
  values: Float32Array;
  rows: number;
}

/** Unit-normalises each H-wide row in place (a zero row stays zero). */
export function normalizeRows(v: Float64Array, H: number): Float64Array {
  for (let r = 0; r < v.length / H; r++) {
    let n = 0;
    for (let i = 0; i < H; i++) n += v[r * H + i] ** 2;
    n = Math.sqrt(n);
    if (n > 0) for (let i = 0; i < H; i++) v[r * H + i] /= n;
  }
  return v;
}

/** `diff`: last-token activation of the positive prompt minus the negative's → [H]. */
export function diffVector(pos: Float32Array, neg: Float32Array, normalize = false): Float32Array {
  const d = Float64Array.from(pos, (x, i) => x - neg[i]);
  return Float32Array.from(normalize ? normalizeRows(d, d.length) : d);
}

/** `mean_diff` (CAA): mean over pairs of last-token (positive − negative) → [H]. */
export function meanDiffVector(pairs: [Float32Array, Float32Array][], normalize = false): Float32Array {
  const H = pairs[0][0].length;
  const m = new Float64Array(H);
  for (const [p, n] of pairs) for (let i = 0; i < H; i++) m[i] += p[i] - n[i];
  for (let i = 0; i < H; i++) m[i] /= pairs.length;
  return Float32Array.from(normalize ? normalizeRows(m, H) : m);
}

/**
 * ActAdd's token alignment: BOS prepended to both prompts, the shorter right-padded with the space
 * token, so that position i of one faces position i of the other.
 */
export function actaddTokens(pos: number[], neg: number[], bos: number, space: number): [number[], number[]] {
  const a = [bos, ...pos];
  const b = [bos, ...neg];
  while (a.length < b.length) a.push(space);
  while (b.length < a.length) b.push(space);
  return [a, b];
}

/** `actadd`: per-position difference of two aligned [k × H] activations → a [k × H] sequence. */
export function actaddVector(pos: Float32Array, neg: Float32Array, H: number, normalize = false): DerivedVector {
  const d = Float64Array.from(pos, (x, i) => x - neg[i]);
  return { values: Float32Array.from(normalize ? normalizeRows(d, H) : d), rows: pos.length / H };
}

/** What `deriveVector` needs of an engine. */
export interface ActivationSource {
  tokenizer: { encode(text: string): number[]; eosId: number };
  activations(req: ActivationsRequest): Promise<ActivationsResult>;
}

const nonEmpty = (s: unknown, what: string): string => {
  if (typeof s !== 'string' || s.length === 0) throw new BadRequestError(`recipe ${what} must be a non-empty string`);
  return s;
};

/** Runs a recipe: reads the activations it needs at `recipe.layer`, then applies the arithmetic. */
export async function deriveVector(src: ActivationSource, recipe: Recipe): Promise<DerivedVector> {
  const last = async (text: string) =>
    (await src.activations({ prompt: src.tokenizer.encode(text), layers: [recipe.layer], reduce: 'last' })).activations[
      recipe.layer
    ];
  switch (recipe.kind) {
    case 'diff': {
      const [p, n] = await Promise.all([
        last(nonEmpty(recipe.positive, 'positive')),
        last(nonEmpty(recipe.negative, 'negative')),
      ]);
      return { values: diffVector(p, n, recipe.normalize), rows: 1 };
    }
    case 'mean_diff': {
      if (!Array.isArray(recipe.pairs) || recipe.pairs.length === 0)
        throw new BadRequestError('recipe mean_diff needs at least one pair');
      const acts = await Promise.all(
        recipe.pairs.map(
          async ([p, n], i) =>
            [await last(nonEmpty(p, `pairs[${i}][0]`)), await last(nonEmpty(n, `pairs[${i}][1]`))] as [
              Float32Array,
              Float32Array,
            ],
        ),
      );
      return { values: meanDiffVector(acts, recipe.normalize), rows: 1 };
    }
    case 'actadd': {
      const space = src.tokenizer.encode(' ');
      if (space.length !== 1) throw new Error('the vocabulary has no single space token');
      const [a, b] = actaddTokens(
        src.tokenizer.encode(nonEmpty(recipe.positive, 'positive')),
        src.tokenizer.encode(nonEmpty(recipe.negative, 'negative')),
        src.tokenizer.eosId,
        space[0],
      );
      const all = (prompt: number[]) => src.activations({ prompt, layers: [recipe.layer], reduce: 'none' });
      const [p, n] = await Promise.all([all(a), all(b)]);
      const H = p.activations[recipe.layer].length / a.length;
      return actaddVector(p.activations[recipe.layer], n.activations[recipe.layer], H, recipe.normalize);
    }
    default:
      throw new BadRequestError(
        `unknown recipe kind ${JSON.stringify((recipe as Recipe).kind)} (diff, actadd, mean_diff)`,
      );
  }
}
