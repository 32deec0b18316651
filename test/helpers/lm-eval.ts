/**
 * lm-evaluation-harness's `local-completions` client, as far as the tests need it: the requests it
 * sends with `tokenized_requests` (token-id prompts) and the way it reads the answers, written from
 * its documented protocol; and the same quantities from the float64 reference.
 */
import type { Intervention } from '../../src/engine/types.ts';
import { refHooks } from './engine-util.ts';
import { logSoftmax, type RefModel, referenceForward } from './reference.ts';

/** A loglikelihood request: context + continuation ids per prompt, greedy, echoed, 1 alternative. */
export const loglikelihoodBody = (model: string, prompts: number[][], maxTokens: 0 | 1, seed = 1234) => ({
  model,
  prompt: prompts,
  temperature: 0,
  max_tokens: maxTokens,
  logprobs: 1,
  seed,
  echo: true,
});

/** A generation request (generate_until): token-id prompts, greedy, stop strings. */
export const generationBody = (model: string, prompts: number[][], maxTokens: number, stop: string[], seed = 1234) => ({
  model,
  prompt: prompts,
  max_tokens: maxTokens,
  temperature: 0,
  stop,
  seed,
});

interface Choice {
  index: number;
  text: string;
  logprobs: { token_logprobs?: (number | null)[]; top_logprobs?: (Record<string, number> | null)[] } | null;
}

/**
 * The harness's reading of a loglikelihood answer: choices by index, the continuation's summed
 * logprob (`token_logprobs[ctxlen:-1]`; with max_tokens 0, as older clients read it, `[ctxlen:]`)
 * and whether each of its tokens is the most likely one at its position (`top_logprobs`' largest).
 */
export function readLoglikelihood(choices: Choice[], ctxlens: number[], maxTokens: 0 | 1) {
  const sorted = [...choices].sort((a, b) => a.index - b.index);
  return sorted.map((c, i) => {
    const end = maxTokens === 1 ? -1 : undefined;
    const lps = c.logprobs!.token_logprobs!.slice(ctxlens[i], end) as number[];
    const tops = c.logprobs!.top_logprobs!.slice(ctxlens[i], end) as Record<string, number>[];
    const sum = lps.reduce((s, x) => s + x, 0);
    const greedy = lps.every((x, t) => x === Math.max(...Object.values(tops[t])));
    return { sum, greedy, count: lps.length };
  });
}

/** The same from the reference: Σ log p(continuation token | before it), and whether each is the argmax. */
export function referenceLoglikelihood(m: RefModel, prompt: number[], ctxlen: number, ivs: Intervention[] = []) {
  const hook = refHooks(ivs, prompt.length, m.nEmbd);
  const lp = referenceForward(m, prompt, undefined, { hook }).logits.map(logSoftmax);
  let sum = 0;
  let greedy = true;
  for (let t = ctxlen; t < prompt.length; t++) {
    const row = lp[t - 1];
    sum += row[prompt[t]];
    let best = 0;
    for (let j = 1; j < row.length; j++) if (row[j] > row[best]) best = j;
    if (best !== prompt[t]) greedy = false;
  }
  return { sum, greedy };
}
