/**
 * Sums over vectors, accumulated in float64 in index order whatever the input's type: the same
 * values give the same bits wherever a norm or a dot product is taken (a vector's stored norm, its
 * unit direction in the engine, the norms units count), so results that must agree do.
 */

/** Σ v[i]² for i in [from, to). */
export function sumSquares(v: ArrayLike<number>, from = 0, to = v.length): number {
  let s = 0;
  for (let i = from; i < to; i++) s += v[i] * v[i];
  return s;
}

/** The L2 norm of v[from, to): the whole vector by default, one row of a sequence given its range. */
export function l2norm(v: ArrayLike<number>, from = 0, to = v.length): number {
  return Math.sqrt(sumSquares(v, from, to));
}

/** Σ a[i]·b[i] over a's length. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
