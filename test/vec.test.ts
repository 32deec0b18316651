/**
 * The shared norms and dot products: float64 sums in index order, so every place that takes a
 * vector's norm gets the same bits as a plain loop over it (the stored `norm`, the engine's unit
 * directions, the residual norms `resid_norm` counts).
 */
import t from 'tap';
import { Rng } from '../src/util/rng.ts';
import { dot, l2norm, sumSquares } from '../src/util/vec.ts';

const rng = new Rng(7);
/** Values spread over many magnitudes, where a different summation order would show. */
const draw = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * 10 ** (rng.next() * 8 - 4));

t.test('l2norm and sumSquares: the bits of a float64 loop in index order', async (t) => {
  for (const n of [0, 1, 7, 64, 1600]) {
    const v = draw(n);
    let s = 0;
    for (const x of v) s += x * x;
    t.equal(sumSquares(v), s, `sumSquares, ${n} values`);
    t.equal(l2norm(v), Math.sqrt(s), `l2norm, ${n} values`);
    t.equal(l2norm(Float64Array.from(v)), Math.sqrt(s), `float64 input, ${n} values`);
    t.equal(l2norm([...v]), Math.sqrt(s), `a plain array, ${n} values`);
  }
  t.equal(l2norm(new Float32Array(5)), 0, 'a zero vector has norm 0');
  t.equal(l2norm(Float32Array.of(3, 4)), 5);
});

t.test('a range is one row of a sequence', async (t) => {
  const H = 48;
  const v = draw(3 * H);
  for (let r = 0; r < 3; r++) {
    let s = 0;
    for (let i = 0; i < H; i++) s += v[r * H + i] ** 2;
    t.equal(l2norm(v, r * H, (r + 1) * H), Math.sqrt(s), `row ${r}`);
    t.equal(sumSquares(v, r * H, (r + 1) * H), s, `row ${r}, squared`);
  }
  t.equal(l2norm(v, 5, 5), 0, 'an empty range');
});

t.test('dot: the bits of a float64 loop in index order', async (t) => {
  const a = draw(777);
  const b = draw(777);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  t.equal(dot(a, b), s);
  t.equal(
    dot(Float64Array.from(a), Float64Array.from(b)),
    Float64Array.from(a).reduce((x, y, i) => x + y * b[i], 0),
  );
  t.equal(dot(a, a), sumSquares(a), 'a vector with itself: its squared norm');
});
