import type { Answer } from './client.js';
import type { Planned } from './workload.js';

/** What is wrong with an answer as the answer to `plan`; empty when it belongs to its request. */
export function checkAnswer(plan: Planned, a: Answer): string[] {
  const problems: string[] = [];
  const expect = (ok: boolean, what: string) => ok || problems.push(what);
  expect(a.ids.length === 1, `the answer carries ${a.ids.length} response ids (${a.ids.join(', ')})`);
  expect(
    a.usage.prompt_tokens === plan.promptTokens,
    `usage.prompt_tokens ${a.usage.prompt_tokens}, the prompt has ${plan.promptTokens}`,
  );
  const n = a.usage.completion_tokens;
  expect(
    n <= plan.maxTokens && (a.finishReason !== 'length' || n === plan.maxTokens),
    `${n} completion tokens, finish_reason ${a.finishReason}, asked for ${plan.maxTokens}`,
  );
  if (a.tokenIds !== undefined)
    expect(a.tokenIds.length === n, `${a.tokenIds.length} tokens received, usage says ${n}`);
  if (a.streamedText !== undefined)
    expect(a.streamedText === a.text, 'the streamed pieces do not add up to the final text');
  if (a.seed !== undefined) expect(a.seed === plan.seed, `seed ${a.seed}, sent ${plan.seed}`);
  if (a.interventions !== undefined) {
    const got = a.interventions.map(({ vector, hash, layer, coeff }) => ({ vector, hash, layer, coeff }));
    expect(
      JSON.stringify(got) === JSON.stringify(plan.interventions),
      `interventions echoed as ${JSON.stringify(got)}, sent ${JSON.stringify(plan.interventions)}`,
    );
  }
  return problems;
}

/**
 * Checks across requests: no response id twice, and every answer to a greedy probe the same
 * as the first one (temperature 0 is deterministic, whatever the endpoint, the streaming and the
 * batch neighbours).
 */
export class CrossChecks {
  private readonly ids = new Set<string>();
  private readonly probes = new Map<string, { text: string; index: number }>();

  check(plan: Planned, a: Answer): string[] {
    const problems: string[] = [];
    for (const id of a.ids) {
      if (this.ids.has(id)) problems.push(`response id ${id} was already received`);
      this.ids.add(id);
    }
    if (plan.probe === undefined) return problems;
    const first = this.probes.get(plan.probe);
    if (!first) this.probes.set(plan.probe, { text: a.text, index: plan.index });
    else if (first.text !== a.text)
      problems.push(
        `greedy probe ${plan.probe}: ${JSON.stringify(a.text)}, request #${first.index} got ${JSON.stringify(first.text)}`,
      );
    return problems;
  }
}
