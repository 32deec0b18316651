import { describe, type StoredVector } from '../../src/store/vectors.ts';

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
