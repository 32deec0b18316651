import { Rng } from '../util/rng.js';
import type { SamplingParams } from './types.js';

/** Buckets of one split in `Sampler.top`: 16 bits of a float64's high word. */
const BUCKETS = 1 << 16;
/** Index of a float64's high 32-bit word in a Uint32Array view of it (1 on little-endian machines). */
const HI = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1 ? 1 : 0;

export interface Sampled {
  id: number;
  /** log p(id) under the model's raw distribution. */
  logprob: number;
}

/**
 * One request's sampler: penalties, temperature, top-k, top-p and a generator seeded by the
 * request alone, so a row's tokens never depend on its batch neighbours.
 *
 * Order (as in Hugging Face and vLLM): penalties → temperature → top-k → top-p (on the renormalised
 * top-k mass) → one uniform draw. `temperature` 0 is greedy (the lowest id wins a tie).
 */
export class Sampler {
  private readonly counts = new Map<number, number>();
  private readonly rng: Rng;
  // Scratch buffers reused across steps (the vocabulary is ~50k wide).
  private probs: Float64Array;
  private keep: Uint8Array;
  private chosen: Int32Array;
  private edgeA: Int32Array;
  private edgeB: Int32Array;
  private readonly bucketCount = new Uint32Array(BUCKETS);
  private readonly bucketMass = new Float64Array(BUCKETS);

  constructor(
    private readonly p: Required<Pick<SamplingParams, 'temperature' | 'top_k' | 'top_p' | 'frequency_penalty' | 'presence_penalty'>>,
    seed: number,
    vocab: number,
  ) {
    this.rng = new Rng(seed);
    this.probs = new Float64Array(vocab);
    this.keep = new Uint8Array(vocab);
    this.chosen = new Int32Array(vocab);
    this.edgeA = new Int32Array(vocab);
    this.edgeB = new Int32Array(vocab);
  }

  /** Records a token as generated (for the penalties). */
  observe(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  /**
   * Draws the next token from one row of logits. `lse`, log Σ exp(logits), gives the token's
   * logprob without another pass over the vocabulary (the serving graph computes it); without it,
   * it is computed here.
   */
  sample(logits: Float32Array, lse?: number): Sampled {
    const V = logits.length;
    const { frequency_penalty: fp, presence_penalty: pp, temperature: t } = this.p;
    const penalised = (fp !== 0 || pp !== 0) && this.counts.size > 0;
    // One pass: the raw maximum (for the log-softmax normaliser) and the greedy choice.
    let rawMax = -Infinity;
    let best = 0;
    for (let i = 0; i < V; i++) {
      if (logits[i] > rawMax) {
        rawMax = logits[i];
        best = i;
      }
    }
    const x = this.probs;
    let id: number;
    if (t === 0 && !penalised) {
      id = best; // the first maximum: the lowest id wins a tie
    } else {
      for (let i = 0; i < V; i++) x[i] = logits[i];
      if (penalised) for (const [tok, n] of this.counts) x[tok] -= fp * n + pp;
      if (t === 0) {
        id = 0;
        for (let i = 1; i < V; i++) if (x[i] > x[id]) id = i;
      } else {
        id = this.draw(x, V);
      }
    }
    // log p(id) under the raw distribution; with temperature 1 and no penalty, draw() has the sum
    if (lse !== undefined) {
      this.lastRawSum = undefined;
      return { id, logprob: logits[id] - lse };
    }
    let rawSum = this.lastRawSum;
    if (rawSum === undefined) {
      // terms below e^-30 of the maximum change the sum by less than V·e^-30 ≈ 5e-9 (relative):
      // skip their exp (most of the vocabulary, for a trained model)
      rawSum = 0;
      const floor = rawMax - 30;
      for (let i = 0; i < V; i++) if (logits[i] > floor) rawSum += Math.exp(logits[i] - rawMax);
    }
    this.lastRawSum = undefined;
    return { id, logprob: logits[id] - rawMax - Math.log(rawSum) };
  }

  /** Set by draw() when its weights are the raw softmax's (temperature 1, no penalty). */
  private lastRawSum: number | undefined;

  /** Temperature, top-k, top-p and the draw, on penalised logits `x` (overwritten with unnormalised weights). */
  private draw(x: Float64Array, V: number): number {
    const t = this.p.temperature;
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (x[i] > max) max = x[i];
    let sum = 0;
    for (let i = 0; i < V; i++) {
      x[i] = Math.exp((x[i] - max) / t);
      sum += x[i];
    }
    const penalised = (this.p.frequency_penalty !== 0 || this.p.presence_penalty !== 0) && this.counts.size > 0;
    if (t === 1 && !penalised) this.lastRawSum = sum;

    const k = this.p.top_k > 0 ? Math.min(this.p.top_k, V) : V;
    const topP = this.p.top_p;
    if (k === V && topP >= 1) {
      let u = this.rng.next() * sum;
      for (let i = 0; i < V; i++) {
        u -= x[i];
        if (u < 0) return i;
      }
      return V - 1; // rounding left u a hair above zero
    }
    const top = this.top(x, V, k, k === V ? topP * sum : Infinity);
    let chosen = this.chosen.subarray(0, top.n);
    let mass = top.mass;
    if (k < V && topP < 1) {
      // top-p on the renormalised top-k distribution, in descending order (ties: lower id first)
      chosen = Int32Array.from(chosen).sort((a, b) => x[b] - x[a] || a - b);
      let cum = 0;
      let cut = chosen.length;
      for (let i = 0; i < chosen.length; i++) {
        cum += x[chosen[i]];
        if (cum >= topP * mass) {
          cut = i + 1;
          break;
        }
      }
      chosen = chosen.subarray(0, cut);
      mass = 0;
      for (const c of chosen) mass += x[c];
    }
    // Walk the kept tokens in id order, not in probability order: near-equal probabilities (a flat
    // distribution) may swap places under the last-bit differences that batching causes, and a walk
    // in probability order would then land on a different token for the same draw.
    const keep = this.keep;
    keep.fill(0);
    for (const c of chosen) keep[c] = 1;
    let u = this.rng.next() * mass;
    let lastKept = chosen[0];
    for (let i = 0; i < V; i++) {
      if (!keep[i]) continue;
      lastKept = i;
      u -= x[i];
      if (u < 0) return i;
    }
    return lastKept;
  }

  /**
   * The most probable tokens, the fewest that reach `k` tokens or `target` mass (in descending
   * order of weight, ties to the lower id): their count `n` (in `this.chosen`, not sorted) and
   * their mass. Weights `x` are in (0, 1], so the high 32-bit word of a float64 orders them. Tokens
   * are counted into buckets by that word's top 16 bits (exponent and 4 mantissa bits) and the
   * buckets walked down from the top; the bucket where the walk stops is split again by the word's
   * low 16 bits, and only the last bucket is sorted. O(V), where a sort or a heap is O(V log V).
   */
  private top(x: Float64Array, V: number, k: number, target: number): { n: number; mass: number } {
    const hi = new Uint32Array(x.buffer, x.byteOffset, 2 * V);
    const pick = { n: 0, mass: 0, k, target };
    let m = this.level(x, hi, null, V, false, this.edgeA, pick);
    let last = this.edgeA;
    if (m > 64) {
      m = this.level(x, hi, this.edgeA, m, true, this.edgeB, pick);
      last = this.edgeB;
    }
    const rest = Array.from(last.subarray(0, m)).sort((a, b) => x[b] - x[a] || a - b);
    for (const i of rest) {
      if (pick.n >= k || pick.mass >= target) break;
      this.chosen[pick.n++] = i;
      pick.mass += x[i];
    }
    return pick;
  }

  /**
   * One split of `top`: counts the tokens `ids` (0..m−1 when null) into 2^16 buckets by 16 bits of
   * their weight's high word (the top half, or the low half within one top-half bucket), takes every
   * token of the buckets above the one where `k` or `target` would be reached, and writes that
   * bucket's tokens to `out`; returns how many.
   */
  private level(
    x: Float64Array,
    hi: Uint32Array,
    ids: Int32Array | null,
    m: number,
    low: boolean,
    out: Int32Array,
    pick: { n: number; mass: number; k: number; target: number },
  ): number {
    const { bucketCount: count, bucketMass: bmass, chosen } = this;
    const key = (i: number) => (low ? hi[2 * i + HI] & 0xffff : hi[2 * i + HI] >>> 16);
    count.fill(0);
    bmass.fill(0);
    for (let j = 0; j < m; j++) {
      const i = ids ? ids[j] : j;
      const b = key(i);
      count[b]++;
      bmass[b] += x[i];
    }
    let n = pick.n;
    let mass = pick.mass;
    let edge = BUCKETS - 1;
    for (; edge > 0; edge--) {
      if (n + count[edge] >= pick.k || mass + bmass[edge] >= pick.target) break;
      n += count[edge];
      mass += bmass[edge];
    }
    pick.mass = mass;
    let rest = 0;
    for (let j = 0; j < m; j++) {
      const i = ids ? ids[j] : j;
      const b = key(i);
      if (b > edge) chosen[pick.n++] = i;
      else if (b === edge) out[rest++] = i;
    }
    return rest;
  }
}
