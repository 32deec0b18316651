import { Rng } from '../util/rng.js';
import type { SamplingParams } from './types.js';

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
  private heap: Int32Array;
  private keep: Uint8Array;

  constructor(
    private readonly p: Required<Pick<SamplingParams, 'temperature' | 'top_k' | 'top_p' | 'frequency_penalty' | 'presence_penalty'>>,
    seed: number,
    vocab: number,
  ) {
    this.rng = new Rng(seed);
    this.probs = new Float64Array(vocab);
    this.heap = new Int32Array(vocab);
    this.keep = new Uint8Array(vocab);
  }

  /** Records a token as generated (for the penalties). */
  observe(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  sample(logits: Float32Array): Sampled {
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
    // Pop tokens in descending probability from a max-heap until top-k and top-p are satisfied.
    const heap = this.heap;
    for (let i = 0; i < V; i++) heap[i] = i;
    const better = (a: number, b: number) => x[a] > x[b] || (x[a] === x[b] && a < b);
    const siftDown = (start: number, n: number) => {
      let i = start;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) return;
        let c = l;
        if (l + 1 < n && better(heap[l + 1], heap[l])) c = l + 1;
        if (!better(heap[c], heap[i])) return;
        const tmp = heap[i];
        heap[i] = heap[c];
        heap[c] = tmp;
        i = c;
      }
    };
    for (let i = (V >> 1) - 1; i >= 0; i--) siftDown(i, V);
    const chosen: number[] = [];
    let n = V;
    let mass = 0;
    while (chosen.length < k) {
      const top = heap[0];
      chosen.push(top);
      mass += x[top];
      heap[0] = heap[--n];
      siftDown(0, n);
      if (k === V && mass >= topP * sum) break; // top-p alone: the smallest prefix reaching top_p
    }
    if (k < V && topP < 1) {
      // top-p on the renormalised top-k distribution
      let cum = 0;
      let cut = chosen.length;
      for (let i = 0; i < chosen.length; i++) {
        cum += x[chosen[i]];
        if (cum >= topP * mass) {
          cut = i + 1;
          break;
        }
      }
      chosen.length = cut;
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
}
