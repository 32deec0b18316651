import type { Test } from 'tap';
import { describe, vectorHash } from '../../src/store/content.ts';
import type { StoredVector } from '../../src/store/types.ts';

/** A registry entry as a store keeps it (layer 1, uploaded, model `m@1`), values `f(i)` of the given shape. */
export function storedVector(name: string, shape: number[], H: number, f: (i: number) => number): StoredVector {
  const values = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => f(i));
  return {
    name,
    ...describe(values, shape),
    layer: 1,
    recipe: 'uploaded',
    model: { id: 'm@1', n_embd: H },
    description: null,
    created_at: new Date(0).toISOString(),
    values,
  };
}

/** Values with awkward bits: -0, a subnormal, the largest float32, and a NaN with a payload. */
export const awkward = (n: number, seed: number) => {
  const v = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.7 + seed) * 3);
  v[0] = -0;
  if (n > 1) v[1] = 1e-45;
  if (n > 2) v[2] = 3.4028234663852886e38;
  if (n > 3) new Uint32Array(v.buffer)[3] = 0x7fc00123;
  return v;
};

export const bytes = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);

/** Awkward values of `shape` put by hash into a store and got back: the shape and every bit. Returns the hash. */
export async function roundTrip(
  t: Test,
  store: {
    putValues(hash: string, shape: number[], values: Float32Array): Promise<void>;
    getValues(hash: string): Promise<{ shape: number[]; values: Float32Array } | null>;
  },
  shape: number[],
): Promise<string> {
  const v = awkward(
    shape.reduce((a, b) => a * b, 1),
    shape[0],
  );
  const hash = vectorHash(shape, v);
  await store.putValues(hash, shape, v);
  const got = await store.getValues(hash);
  t.same(got?.shape, shape, `shape ${JSON.stringify(shape)} round-trips`);
  t.ok(got && bytes(got.values).equals(bytes(v)), 'and the values, -0, subnormal and NaN payload included');
  return hash;
}
