import { Rng } from '../util/rng.js';
import type { SamplingParams } from './types.js';

/** Buckets of one split in `Sampler.top`: 16 bits of a float64. */
const BUCKETS = 1 << 16;

/**
 * Working memory of `sample`, shared by every sampler of a thread: rows are sampled one at a time,
 * so a request's sampler holds only its counts and its generator (not ~2 MB of buffers while it
 * waits in a queue).
 */
interface Scratch {
  probs: Float64Array;
  keep: Uint8Array;
  chosen: Int32Array;
  groupA: Int32Array;
  groupB: Int32Array;
  count: Uint32Array;
  mass: Float64Array;
}
const scratches = new Map<number, Scratch>();

/** Whether the weights of `group` (0..m−1 when null) are all equal. */
function equal(x: Float64Array, group: Int32Array | null, m: number): boolean {
  const first = x[group ? group[0] : 0];
  for (let j = 1; j < m; j++) if (x[group ? group[j] : j] !== first) return false;
  return true;
}
function scratchFor(vocab: number): Scratch {
  let s = scratches.get(vocab);
  if (!s) {
    s = {
      probs: new Float64Array(vocab),
      keep: new Uint8Array(vocab),
      chosen: new Int32Array(vocab),
      groupA: new Int32Array(vocab),
      groupB: new Int32Array(vocab),
      count: new Uint32Array(BUCKETS),
      mass: new Float64Array(BUCKETS),
    };
    scratches.set(vocab, s);
  }
  return s;
}
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
  private readonly scratch: Scratch;

  constructor(
    private readonly p: Required<
      Pick<SamplingParams, 'temperature' | 'top_k' | 'top_p' | 'frequency_penalty' | 'presence_penalty'>
    >,
    seed: number,
    vocab: number,
  ) {
    this.rng = new Rng(seed);
    this.scratch = scratchFor(vocab);
  }

  /** Records a token as generated (for the penalties). */
  observe(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  /**
   * Draws the next token from one row of logits. `lse`, log Σ exp(logits) (the serving graph's
   * `last_lse`), makes the token's logprob under the raw distribution.
   */
  sample(logits: Float32Array, lse: number): Sampled {
    const V = logits.length;
    const { frequency_penalty: fp, presence_penalty: pp, temperature: t } = this.p;
    const penalised = (fp !== 0 || pp !== 0) && this.counts.size > 0;
    let id = 0;
    if (t === 0 && !penalised) {
      for (let i = 1; i < V; i++) if (logits[i] > logits[id]) id = i; // the lowest id wins a tie
    } else {
      const x = this.scratch.probs;
      for (let i = 0; i < V; i++) x[i] = logits[i];
      if (penalised) for (const [tok, n] of this.counts) x[tok] -= fp * n + pp;
      if (t === 0) {
        for (let i = 1; i < V; i++) if (x[i] > x[id]) id = i;
      } else {
        id = this.draw(x, V);
      }
    }
    return { id, logprob: logits[id] - lse };
  }

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
    let chosen = this.scratch.chosen.subarray(0, top.n);
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
    const keep = this.scratch.keep;
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
   * order of weight, ties to the lower id): their count `n` (in `scratch.chosen`, not sorted) and
   * their mass. Weights `x` are in [0, 1], and a non-negative float64's bits order it: tokens are
   * counted into buckets by 16 bits at a time, from the top (exponent and 4 mantissa bits) down,
   * each split taking every token of the buckets above the cut and splitting again the bucket where
   * the cut falls, until that group is small (then sorted) or of equal weights (then taken in id
   * order: ties, or weights that underflowed to 0). O(V), where a sort or a heap is O(V log V).
   */
  private top(x: Float64Array, V: number, k: number, target: number): { n: number; mass: number } {
    const { chosen, groupA, groupB } = this.scratch;
    const words = new Uint32Array(x.buffer, x.byteOffset, 2 * V);
    const pick = { n: 0, mass: 0, k, target };
    let group: Int32Array | null = null; // null: every token
    let m = V;
    const at = (j: number) => (group ? group[j] : j);
    for (let split = 0; split < 4 && m > 64 && !equal(x, group, m); split++) {
      const out = split % 2 ? groupB : groupA;
      m = this.split(x, words, split, group, m, out, pick);
      group = out;
    }
    const take = (i: number) => {
      chosen[pick.n++] = i;
      pick.mass += x[i];
    };
    if (m <= 64) {
      const ids = Array.from({ length: m }, (_, j) => at(j)).sort((a, b) => x[b] - x[a] || a - b);
      for (const i of ids) {
        if (pick.n >= k || pick.mass >= target) break;
        take(i);
      }
    } else {
      // equal weights (ties, or all underflowed to 0): in id order, as they came
      for (let j = 0; j < m && pick.n < k && pick.mass < target; j++) take(at(j));
    }
    return pick;
  }

  /**
   * One split of `top`: counts the tokens of `group` (0..m−1 when null) into 2^16 buckets by the
   * `split`-th 16 bits of their weight (0: the top of the high word … 3: the bottom of the low word),
   * takes every token of the buckets above the one where `k` or `target` would be reached, and
   * writes that bucket's tokens, in the order they came, to `out`; returns how many.
   */
  private split(
    x: Float64Array,
    words: Uint32Array,
    split: number,
    group: Int32Array | null,
    m: number,
    out: Int32Array,
    pick: { n: number; mass: number; k: number; target: number },
  ): number {
    const { count, mass: bmass, chosen } = this.scratch;
    const word = split < 2 ? HI : 1 - HI;
    const shift = split % 2 ? 0 : 16;
    const key = (i: number) => (words[2 * i + word] >>> shift) & 0xffff;
    // the buckets are all zero between calls: this split clears the ones it fills (the second pass
    // below), not all 2^16 of them, which cost more than the split itself on small vocabularies
    let highest = 0;
    for (let j = 0; j < m; j++) {
      const i = group ? group[j] : j;
      const b = key(i);
      count[b]++;
      bmass[b] += x[i];
      if (b > highest) highest = b;
    }
    let n = pick.n;
    let mass = pick.mass;
    let edge = highest; // the buckets above are empty
    for (; edge > 0; edge--) {
      if (n + count[edge] >= pick.k || mass + bmass[edge] >= pick.target) break;
      n += count[edge];
      mass += bmass[edge];
    }
    pick.mass = mass;
    let rest = 0;
    for (let j = 0; j < m; j++) {
      const i = group ? group[j] : j;
      const b = key(i);
      count[b] = 0;
      bmass[b] = 0;
      if (b > edge) chosen[pick.n++] = i;
      else if (b === edge) out[rest++] = i;
    }
    return rest;
  }
}
