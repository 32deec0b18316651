import type { Intervention } from './types.js';

/** A row's interventions and the boundary between its prompt and its generated tokens. */
export interface RowSteering {
  interventions: readonly Intervention[];
  promptLength: number;
}

/** Whether `iv` adds at absolute position `pos` (DESIGN.md §4). */
export function applies(iv: Intervention, pos: number, promptLength: number): boolean {
  switch (iv.positions ?? (iv.rows === 1 ? 'all' : 'front')) {
    case 'all':
      return true;
    case 'prompt':
      return pos < promptLength;
    case 'generated':
      return pos >= promptLength;
    case 'front':
      return pos < iv.rows && pos < promptLength;
  }
}

/**
 * The `steer.{l}` values for one forward pass: for each hook point, null when no row adds anything
 * there (the caller feeds a [1,1,1] zero), else a [B, T, H] buffer holding, for each row and
 * position, the sum of `coeff × vector` of every intervention that applies. `positions[b][t]` is the
 * absolute position of row b's t-th token, or -1 for padding.
 */
export function buildSteer(
  rows: readonly (RowSteering | undefined)[],
  positions: readonly (readonly number[])[],
  nLayer: number,
  H: number,
): (Float32Array | null)[] {
  const out: (Float32Array | null)[] = new Array(nLayer + 1).fill(null);
  const T = positions[0]?.length ?? 0;
  const B = rows.length;
  for (let b = 0; b < B; b++) {
    const row = rows[b];
    if (!row) continue;
    for (const iv of row.interventions) {
      for (let t = 0; t < T; t++) {
        const pos = positions[b][t];
        if (pos < 0 || !applies(iv, pos, row.promptLength)) continue;
        out[iv.layer] ??= new Float32Array(B * T * H);
        const buf = out[iv.layer]!;
        const src = iv.rows === 1 ? 0 : pos * H;
        const dst = (b * T + t) * H;
        for (let i = 0; i < H; i++) buf[dst + i] += iv.coeff * iv.values[src + i];
      }
    }
  }
  return out;
}
