import { logSumExp, topLogprobs } from './logprobs.js';
import type { Slot } from './slot.js';

/**
 * Scores prompt tokens [from, to) of slot s from a pass's `logits` (row b, T positions starting at
 * `from`, V per position): each token's logprob given those before it (the first prompt token:
 * null), and the most likely alternatives at each position (`prompt_logprobs` of them). A prompt
 * prefilled in chunks is scored chunk by chunk.
 */
export function scorePrompt(
  s: Slot,
  logits: Float32Array | undefined,
  V: number,
  b: number,
  T: number,
  from: number,
  to: number,
): void {
  const k = s.req.prompt_logprobs;
  if (k === undefined || !logits) return;
  const p = s.req.prompt;
  s.promptLogprobs ??= [{ id: p[0], logprob: null, top_logprobs: [] }];
  // the logits at position t predict prompt token t + 1 (the last position predicts the first
  // generated token: no prompt token)
  for (let t = from; t < Math.min(to, p.length - 1); t++) {
    const row = logits.subarray((b * T + t - from) * V, (b * T + t - from + 1) * V);
    const lse = logSumExp(row);
    s.promptLogprobs.push({ id: p[t + 1], logprob: row[p[t + 1]] - lse, top_logprobs: topLogprobs(row, lse, k) });
  }
}
