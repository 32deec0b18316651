import { BadRequestError, UnprocessableError } from '../errors.js';
import type { Site } from '../model/hooks.js';
import { encodeText, type Tokenizer } from '../model/tokenizer.js';
import { dot, l2norm } from '../util/vec.js';
import type { ActivationsRequest, ActivationsResult } from './types.js';

/**
 * Steering-vector recipes (docs/architecture.md §4) as pure functions of residual-stream activations, plus
 * `deriveVector`, which reads the activations through any engine-like object.
 */

export interface Recipe {
  kind: 'diff' | 'actadd' | 'mean_diff' | 'pca';
  /** Layer whose activations are read, at `site`. */
  layer: number;
  /** Hook site read (hooks.ts); the vector remembers it. Default `resid_pre`. */
  site?: Site;
  /** `diff` and `actadd`: the two prompts. */
  positive?: string;
  negative?: string;
  /** `mean_diff` and `pca`: contrastive (positive, negative) prompt pairs. */
  pairs?: [string, string][];
  /** Scale the result to unit norm (a sequence: each row; `pca` is always unit). Default false. */
  normalize?: boolean;
  /** `pca`: subtract the mean difference before the decomposition (repeng's way). Default false. */
  center?: boolean;
}

export interface DerivedVector {
  /** [H] for a direction, [k × H] row-major for a sequence. */
  values: Float32Array;
  rows: number;
  /**
   * Pair recipes (`mean_diff`, `pca`): the mean cosine between each pair's difference and the mean
   * difference (how consistently the pairs point one way; near 1: steerable, near 0: noise).
   */
  pair_consistency?: number;
}

/** Each pair's last-token difference, in float64. */
const differences = (pairs: [Float32Array, Float32Array][]) =>
  pairs.map(([p, n]) => Float64Array.from(p, (x, i) => x - n[i]));

function meanOf(rows: Float64Array[]): Float64Array {
  const m = new Float64Array(rows[0].length);
  for (const r of rows) for (let i = 0; i < m.length; i++) m[i] += r[i];
  return m.map((v) => v / rows.length);
}

/** The mean cosine between each difference and the mean difference (a zero difference counts 0). */
export function pairConsistency(pairs: [Float32Array, Float32Array][]): number {
  const d = differences(pairs);
  const m = meanOf(d);
  const nm = l2norm(m);
  if (nm === 0) return 0;
  let sum = 0;
  for (const r of d) {
    const nr = l2norm(r);
    if (nr > 0) sum += dot(r, m) / (nr * nm);
  }
  return sum / d.length;
}

/**
 * The largest eigenvector of a symmetric matrix (cyclic Jacobi rotations, float64: exact to
 * rounding, whatever the eigengap).
 */
export function topEigenvector(A: Float64Array[]): Float64Array {
  const n = A.length;
  const a = A.map((r) => Float64Array.from(r));
  const V = Array.from({ length: n }, (_, i) => Float64Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p][q]) < 1e-300) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k][p];
          const akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p][k];
          const aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = V[k][p];
          const vkq = V[k][q];
          V[k][p] = c * vkp - s * vkq;
          V[k][q] = s * vkp + c * vkq;
        }
      }
    }
  }
  let best = 0;
  for (let i = 1; i < n; i++) if (a[i][i] > a[best][best]) best = i;
  return Float64Array.from(V, (row) => row[best]);
}

/**
 * `pca`: the first right singular vector of the pairs' last-token differences D (n × H), unit norm,
 * signed so that the mean difference projects positively. Uncentered by default: the direction of
 * largest mean squared projection, so a consistent shift dominates; `center` subtracts the mean
 * difference first. Computed from the n × n Gram matrix D·Dᵀ: its top eigenvector a gives v ∝ Dᵀ·a.
 */
export function pcaVector(pairs: [Float32Array, Float32Array][], center = false): Float32Array {
  const d = differences(pairs);
  const mean = meanOf(d);
  const rows = center ? d.map((r) => r.map((x, i) => x - mean[i])) : d;
  const gram = rows.map((a) => Float64Array.from(rows, (b) => dot(a, b)));
  const a = topEigenvector(gram);
  const v = new Float64Array(mean.length);
  for (const [k, r] of rows.entries()) for (let i = 0; i < v.length; i++) v[i] += a[k] * r[i];
  const n = l2norm(v);
  if (n === 0) return new Float32Array(v.length);
  const sign = dot(v, mean) < 0 ? -1 : 1;
  return Float32Array.from(v, (x) => (sign * x) / n);
}

/** Unit-normalises each H-wide row in place (a zero row stays zero). */
export function normalizeRows(v: Float64Array, H: number): Float64Array {
  for (let r = 0; r < v.length / H; r++) {
    const n = l2norm(v, r * H, (r + 1) * H);
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
  tokenizer: Pick<Tokenizer, 'encode' | 'bosId' | 'addBos' | 'spaceId'>;
  activations(req: ActivationsRequest): Promise<ActivationsResult>;
}

const nonEmpty = (s: unknown, what: string): string => {
  if (typeof s !== 'string' || s.length === 0) throw new BadRequestError(`recipe ${what} must be a non-empty string`);
  return s;
};

/** Runs a recipe: reads the activations it needs at `recipe.layer`, then applies the arithmetic. */
export async function deriveVector(src: ActivationSource, recipe: Recipe): Promise<DerivedVector> {
  const site = recipe.site ?? 'resid_pre';
  const last = async (text: string) =>
    (
      await src.activations({
        prompt: encodeText(src.tokenizer, text),
        layers: [recipe.layer],
        site,
        reduce: 'last',
      })
    ).activations[recipe.layer];
  const pairActs = (pairs: [string, string][] | undefined) => {
    if (!Array.isArray(pairs) || pairs.length === 0)
      throw new BadRequestError(`recipe ${recipe.kind} needs at least one pair`);
    return Promise.all(
      pairs.map(
        async ([p, n], i) =>
          [await last(nonEmpty(p, `pairs[${i}][0]`)), await last(nonEmpty(n, `pairs[${i}][1]`))] as [
            Float32Array,
            Float32Array,
          ],
      ),
    );
  };
  switch (recipe.kind) {
    case 'diff': {
      const [p, n] = await Promise.all([
        last(nonEmpty(recipe.positive, 'positive')),
        last(nonEmpty(recipe.negative, 'negative')),
      ]);
      return { values: diffVector(p, n, recipe.normalize), rows: 1 };
    }
    case 'mean_diff': {
      const acts = await pairActs(recipe.pairs);
      return { values: meanDiffVector(acts, recipe.normalize), rows: 1, pair_consistency: pairConsistency(acts) };
    }
    case 'pca': {
      const acts = await pairActs(recipe.pairs);
      return { values: pcaVector(acts, recipe.center), rows: 1, pair_consistency: pairConsistency(acts) };
    }
    case 'actadd': {
      const space = src.tokenizer.spaceId;
      if (space === undefined)
        throw new UnprocessableError('recipe kind actadd pads with a space token, and this vocabulary has none');
      const [a, b] = actaddTokens(
        src.tokenizer.encode(nonEmpty(recipe.positive, 'positive')),
        src.tokenizer.encode(nonEmpty(recipe.negative, 'negative')),
        src.tokenizer.bosId,
        space,
      );
      const all = (prompt: number[]) => src.activations({ prompt, layers: [recipe.layer], site, reduce: 'none' });
      const [p, n] = await Promise.all([all(a), all(b)]);
      const H = p.activations[recipe.layer].length / a.length;
      return actaddVector(p.activations[recipe.layer], n.activations[recipe.layer], H, recipe.normalize);
    }
    default:
      throw new BadRequestError(
        `unknown recipe kind ${JSON.stringify((recipe as Recipe).kind)} (diff, actadd, mean_diff, pca)`,
      );
  }
}
