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
    // Raw log-softmax normaliser, for the reported logprob.
    let rawMax = -Infinity;
    for (let i = 0; i < V; i++) if (logits[i] > rawMax) rawMax = logits[i];
    let rawSum = 0;
    for (let i = 0; i < V; i++) rawSum += Math.exp(logits[i] - rawMax);
    const logZ = rawMax + Math.log(rawSum);

    const x = this.probs;
    for (let i = 0; i < V; i++) x[i] = logits[i];
    const { frequency_penalty: fp, presence_penalty: pp } = this.p;
    if (fp !== 0 || pp !== 0) for (const [id, n] of this.counts) x[id] -= fp * n + pp;

    let id: number;
    if (this.p.temperature === 0) {
      id = 0;
      for (let i = 1; i < V; i++) if (x[i] > x[id]) id = i;
    } else {
      id = this.draw(x, V);
    }
    return { id, logprob: logits[id] - logZ };
  }

  /** Temperature, top-k, top-p and the draw, on penalised logits `x` (overwritten with probabilities). */
  private draw(x: Float64Array, V: number): number {
    const t = this.p.temperature;
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (x[i] > max) max = x[i];
    let sum = 0;
    for (let i = 0; i < V; i++) {
      x[i] = Math.exp((x[i] - max) / t);
      sum += x[i];
    }
    for (let i = 0; i < V; i++) x[i] /= sum;

    const k = this.p.top_k > 0 ? Math.min(this.p.top_k, V) : V;
    const topP = this.p.top_p;
    if (k === V && topP >= 1) {
      let u = this.rng.next();
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
      if (k === V && mass >= topP) break; // top-p alone: the smallest prefix reaching top_p
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
