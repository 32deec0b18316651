import { type Site, steerName } from '../model/hooks.js';
import { dot, l2norm } from '../util/vec.js';
import type { Intervention } from './types.js';

/** A row's interventions and the boundary between its prompt and its generated tokens. */
export interface RowSteering {
  interventions: readonly Intervention[];
  promptLength: number;
}

/** Whether `iv` applies at absolute position `pos` (docs/architecture.md §4). */
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

export const siteOf = (iv: Intervention): Site => iv.site ?? 'resid_pre';

/** A hook point's projections for a pass: [B, K, H] each (rows without any: zeros). */
export interface Projection {
  u: Float32Array;
  z: Float32Array;
  K: number;
}

/** The steering inputs of one pass, by graph input name (steer.ts's names: hooks.ts). */
export interface PassSteering {
  /** `steer.*` input → [B, T, H]; absent: a broadcast zero. */
  add: Map<string, Float32Array>;
  /** `steer.*` input of a hook point → its projections; absent: none (K = 0). */
  proj: Map<string, Projection>;
}

/**
 * One row's ablations and clamps at one hook point, in request order, folded into one affine map
 * (float64): each is x ← x + (c − x·u)u (ablate: c = 0), so their composition is
 * x ← x − U·W·Uᵀ·x + b with W lower block-triangular, built one op at a time:
 * W_k = [[W, 0], [−(u_k·U) W, 1]] and b_k = b − (u_k·b) u_k + c_k u_k. The graph applies it as
 * x − (x·Uᵀ)·Z + s with Z = Wᵀ·U (K × H) and s the adds folded in (see buildSteer).
 */
export function foldProjections(ops: { u: Float64Array; c: number }[], H: number) {
  const K = ops.length;
  const W = Array.from({ length: K }, () => new Float64Array(K));
  const b = new Float64Array(H);
  for (let k = 0; k < K; k++) {
    const u = ops[k].u;
    // g_j = u_k · u_j for the earlier ops; row k of W = −g·W (columns < k), and 1 on the diagonal
    const g = Float64Array.from({ length: k }, (_, j) => dot(u, ops[j].u));
    for (let col = 0; col < k; col++) {
      let s = 0;
      for (let j = col; j < k; j++) s += g[j] * W[j][col];
      W[k][col] = -s;
    }
    W[k][k] = 1;
    const ub = dot(u, b);
    for (let i = 0; i < H; i++) b[i] += (ops[k].c - ub) * u[i];
  }
  // Z = Wᵀ·U: row i = Σ_j W[j][i] u_j
  const Z = Array.from({ length: K }, (_, i) => {
    const z = new Float64Array(H);
    for (let j = i; j < K; j++) for (let h = 0; h < H; h++) z[h] += W[j][i] * ops[j].u[h];
    return z;
  });
  return { U: ops.map((o) => o.u), Z, b };
}

/** The unit vector of a direction (float64). */
export function unit(values: Float32Array): Float64Array {
  const n = l2norm(values);
  return Float64Array.from(values, (v) => v / n);
}

/**
 * The steering inputs for one forward pass. For each hook point where a row adds something: a
 * [B, T, H] buffer with, for each row and position, the sum of `coeff × vector` of every `add`
 * intervention that applies there; where a row ablates or clamps: its folded projections, the
 * buffer then holding s − (s·Uᵀ)·Z + b (the adds come first, the projections after them, in
 * request order). `positions[b][t]` is the absolute position of row b's t-th token, or -1 for
 * padding. A row's real positions in one pass are all prompt or all generated ones, so a
 * projection's positions policy is the same across the pass (sequences, the only vectors with
 * `front`, only add).
 */
export function buildSteer(
  rows: readonly (RowSteering | undefined)[],
  positions: readonly (readonly number[])[],
  H: number,
): PassSteering {
  const add = new Map<string, Float32Array>();
  const proj = new Map<string, Projection>();
  const T = positions[0]?.length ?? 0;
  const B = rows.length;
  // the projections each row applies at each hook point this pass
  const folded = new Map<string, (ReturnType<typeof foldProjections> | undefined)[]>();
  for (let b = 0; b < B; b++) {
    const row = rows[b];
    if (!row) continue;
    const first = positions[b].find((p) => p >= 0);
    if (first === undefined) continue;
    const ops = new Map<string, { u: Float64Array; c: number }[]>();
    for (const iv of row.interventions) {
      const key = steerName(siteOf(iv), iv.layer);
      if ((iv.op ?? 'add') !== 'add') {
        if (!applies(iv, first, row.promptLength)) continue;
        if (!ops.has(key)) ops.set(key, []);
        ops.get(key)!.push({ u: unit(iv.values), c: iv.op === 'clamp' ? iv.coeff : 0 });
        continue;
      }
      for (let t = 0; t < T; t++) {
        const pos = positions[b][t];
        if (pos < 0 || !applies(iv, pos, row.promptLength)) continue;
        if (!add.has(key)) add.set(key, new Float32Array(B * T * H));
        const buf = add.get(key)!;
        const src = iv.rows === 1 ? 0 : pos * H;
        const dst = (b * T + t) * H;
        for (let i = 0; i < H; i++) buf[dst + i] += iv.coeff * iv.values[src + i];
      }
    }
    for (const [key, list] of ops) {
      if (!folded.has(key))
        folded.set(
          key,
          Array.from({ length: B }, () => undefined),
        );
      folded.get(key)![b] = foldProjections(list, H);
    }
  }
  for (const [key, perRow] of folded) {
    const K = Math.max(...perRow.map((f) => f?.U.length ?? 0));
    const u = new Float32Array(B * K * H);
    const z = new Float32Array(B * K * H);
    if (!add.has(key)) add.set(key, new Float32Array(B * T * H));
    const s = add.get(key)!;
    for (const [b, f] of perRow.entries()) {
      if (!f) continue;
      for (const [k, row] of f.U.entries()) u.set(row, (b * K + k) * H);
      for (const [k, row] of f.Z.entries()) z.set(row, (b * K + k) * H);
      // s ← s − (s·Uᵀ)·Z + b at the row's real positions (float64, stored as float32)
      for (let t = 0; t < T; t++) {
        if (positions[b][t] < 0) continue;
        const at = (b * T + t) * H;
        const out = Float64Array.from(f.b, (v, i) => v + s[at + i]);
        for (const [k, uk] of f.U.entries()) {
          let p = 0;
          for (let i = 0; i < H; i++) p += s[at + i] * uk[i];
          for (let i = 0; i < H; i++) out[i] -= p * f.Z[k][i];
        }
        for (let i = 0; i < H; i++) s[at + i] = out[i];
      }
    }
    proj.set(key, { u, z, K });
  }
  return { add, proj };
}
