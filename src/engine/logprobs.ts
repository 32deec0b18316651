import type { TokenLogprob } from './types.js';

/** The k largest logits of a row as logprobs (logit − lse), most likely first; ties by id. */
export function topLogprobs(logits: Float32Array, lse: number, k: number): TokenLogprob[] {
  if (k <= 0) return [];
  // a sorted window of the k best seen so far: k is at most 20, the vocabulary 50257
  const ids: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (ids.length === k && v <= logits[ids[k - 1]]) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    while (at > 0 && logits[ids[at - 1]] < v) at--;
    ids.splice(at, 0, i);
    if (ids.length > k) ids.pop();
  }
  return ids.map((id) => ({ id, logprob: logits[id] - lse }));
}

/** log Σ exp of a row, in float64. */
export function logSumExp(row: Float32Array): number {
  let m = -Infinity;
  for (const v of row) if (v > m) m = v;
  let z = 0;
  for (const v of row) z += Math.exp(v - m);
  return m + Math.log(z);
}
