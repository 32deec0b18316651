/** Test harness: feeds the steerable graph by its contract names (docs/architecture.md §3). */
import ort from 'onnxruntime-node';
import type { RefSteer } from './reference.ts';

export interface Dims {
  nLayer: number;
  nHead: number;
  nEmbd: number;
  vocab: number;
}

export interface BatchInput {
  /** [B][T] token ids (already padded). */
  ids: number[][];
  /** [B][P+T] 1 for real tokens. */
  mask: number[][];
  /** [B][T] positions. */
  pos: number[][];
  /** present.* of the previous call, or none (P = 0). */
  past?: Record<string, ort.Tensor>;
  /** Per row steering (absolute position = pos of that token). */
  steer?: (RefSteer | undefined)[];
  /** Extra feeds (e.g. logits_all). */
  extra?: Record<string, ort.Tensor>;
}

const i64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);

export async function runGraph(s: ort.InferenceSession, d: Dims, inp: BatchInput, fetch?: string[]) {
  const B = inp.ids.length;
  const T = inp.ids[0].length;
  const H = d.nEmbd;
  const hd = H / d.nHead;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64(inp.ids),
    attention_mask: i64(inp.mask),
    position_ids: i64(inp.pos),
    ...inp.extra,
  };
  for (let l = 0; l < d.nLayer; l++) {
    for (const kv of ['key', 'value']) {
      feeds[`past.${l}.${kv}`] =
        inp.past?.[`present.${l}.${kv}`] ?? new ort.Tensor('float32', new Float32Array(0), [B, d.nHead, 0, hd]);
    }
  }
  // padding carries no steering
  steerFeeds(feeds, d, inp.pos, inp.steer, (b, t) => inp.mask[b][inp.mask[b].length - T + t] === 1);
  return s.run(fillHooks(s, feeds, H), fetch ?? s.outputNames);
}

/**
 * The hook inputs a call leaves out: no steering (a [1,1,1] zero) and no projections (K = 0), at
 * every site the graph has; `extra` (by input name) is fed as given.
 */
export function fillHooks(s: ort.InferenceSession, feeds: Record<string, ort.Tensor>, H: number) {
  for (const name of s.inputNames) {
    if (name in feeds) continue;
    if (name.startsWith('steer.')) feeds[name] = new ort.Tensor('float32', new Float32Array(1), [1, 1, 1]);
    else if (name.startsWith('proj.')) feeds[name] = new ort.Tensor('float32', new Float32Array(0), [1, 0, H]);
    else if (name === 'lens_in') feeds[name] = new ort.Tensor('float32', new Float32Array(0), [0, H]);
  }
  return feeds;
}

/** Left-pads rows of token ids: returns ids, mask, positions (padding gets id 50256, position 0). */
export function leftPad(rows: number[][], padId = 50256) {
  const T = Math.max(...rows.map((r) => r.length));
  return {
    T,
    ids: rows.map((r) => [...Array(T - r.length).fill(padId), ...r]),
    mask: rows.map((r) => [...Array(T - r.length).fill(0), ...r.map(() => 1)]),
    pos: rows.map((r) => [...Array(T - r.length).fill(0), ...r.map((_, i) => i)]),
  };
}

/** Row b, position t of a [B, T, N] float tensor. */
export function at(t: ort.Tensor, b: number, pos: number): Float32Array {
  const [, T, N] = t.dims as number[];
  const data = t.data as Float32Array;
  return data.subarray((b * T + pos) * N, (b * T + pos + 1) * N);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function range(a: ArrayLike<number>[]): number {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of a)
    for (let i = 0; i < v.length; i++) {
      lo = Math.min(lo, v[i]);
      hi = Math.max(hi, v[i]);
    }
  return hi - lo;
}

/** One cache group of the serving graph: [rows, n_head, P, head_dim] per layer. */
export interface ServeGroup {
  rows: number;
  P: number;
  k: Float32Array[];
  v: Float32Array[];
}

export interface ServeInput {
  /** [B][T] right-padded ids and positions. */
  ids: number[][];
  pos: number[][];
  newLen: number[];
  pastLen: number[];
  /** G groups (rows in batch order). */
  groups: ServeGroup[];
  steer?: (RefSteer | undefined)[];
  logitsAll?: boolean;
  /** Extra feeds by name (site steering, projections). */
  extra?: Record<string, ort.Tensor>;
}

/** Feeds the serving graph (serve-graph.ts) by its names. */
export async function runServe(s: ort.InferenceSession, d: Dims, inp: ServeInput, fetch?: string[]) {
  const B = inp.ids.length;
  const H = d.nEmbd;
  const hd = H / d.nHead;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64(inp.ids),
    position_ids: i64(inp.pos),
    new_len: new ort.Tensor('int64', BigInt64Array.from(inp.newLen, BigInt), [B]),
    past_len: new ort.Tensor('int64', BigInt64Array.from(inp.pastLen, BigInt), [B]),
    group_rows: new ort.Tensor(
      'int64',
      BigInt64Array.from(inp.groups, (g) => BigInt(g.rows)),
      [inp.groups.length],
    ),
    logits_all: new ort.Tensor('bool', Uint8Array.of(inp.logitsAll ? 1 : 0), []),
  };
  for (let l = 0; l < d.nLayer; l++) {
    for (const [x, g] of inp.groups.entries()) {
      feeds[`past.${l}.${x}.key`] = new ort.Tensor('float32', g.k[l] ?? new Float32Array(0), [
        g.rows,
        d.nHead,
        g.P,
        hd,
      ]);
      feeds[`past.${l}.${x}.value`] = new ort.Tensor('float32', g.v[l] ?? new Float32Array(0), [
        g.rows,
        d.nHead,
        g.P,
        hd,
      ]);
    }
  }
  steerFeeds(feeds, d, inp.pos, inp.steer, (b, t) => t < inp.newLen[b]);
  return s.run(fillHooks(s, { ...feeds, ...inp.extra }, H), fetch ?? s.outputNames);
}

/**
 * `steer.{l}` for every layer: each row's function at the positions `real` keeps ([B, T, H]), or a
 * broadcast zero where no row steers that layer.
 */
function steerFeeds(
  feeds: Record<string, ort.Tensor>,
  d: Dims,
  pos: number[][],
  steer: BatchInput['steer'],
  real: (b: number, t: number) => boolean,
) {
  const [B, T, H] = [pos.length, pos[0].length, d.nEmbd];
  for (let l = 0; l <= d.nLayer; l++) {
    const data = new Float32Array(B * T * H);
    let used = false;
    for (let b = 0; b < B; b++) {
      const f = steer?.[b];
      if (!f) continue;
      for (let t = 0; t < T; t++) {
        if (!real(b, t)) continue;
        const v = f(l, pos[b][t]);
        if (!v) continue;
        used = true;
        for (let i = 0; i < H; i++) data[(b * T + t) * H + i] = v[i];
      }
    }
    feeds[`steer.${l}`] = used
      ? new ort.Tensor('float32', data, [B, T, H])
      : new ort.Tensor('float32', new Float32Array(1), [1, 1, 1]);
  }
}

/** Right-pads rows of token ids to T: ids, positions (padding: id 0 at position 0) and lengths. */
export function rightPad(rows: number[][], T = Math.max(...rows.map((r) => r.length))) {
  return {
    ids: rows.map((r) => [...r, ...Array(T - r.length).fill(0)]),
    pos: rows.map((r) => [...r.map((_, i) => i), ...Array(T - r.length).fill(0)]),
    newLen: rows.map((r) => r.length),
  };
}

/** An empty cache group. */
export const noCache = (rows = 0): ServeGroup => ({ rows, P: 0, k: [], v: [] });
