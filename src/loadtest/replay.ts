import type { Answer } from './client.js';
import { kind, type Outcome } from './outcome.js';
import type { Endpoint, Planned } from './workload.js';

/** What asking again for some of the run's answers found: the report's `replay`. */
export interface ReplayReport {
  /**
   * The requests whose answers were asked for again, and what they were (`/v1/generate stream,
   * steered`, …): at most --replay, fewer when the run had fewer or was interrupted.
   */
  requests: { request: number; what: string }[];
  /** Replays that got the answer the run got. */
  same: number;
  /** Replays that got another answer: each is a `mismatch` error of its request. */
  different: number;
  /** Replays that got no usable answer, and so no verdict on their request. */
  failed: { request: number; message: string }[];
  /**
   * Statuses of the replays by route, and the tokens they generated: the server counts them too,
   * after the run's change of /metrics was read.
   */
  by_status: Record<Endpoint, Record<string, number>>;
  generated_tokens: number;
}

/** What the replay spreads its requests over: endpoint, streaming or not, steered or not. */
const groupOf = ({ plan }: Outcome) =>
  `${kind(plan.endpoint, plan.stream)}, ${plan.steering === 'none' ? 'unsteered' : 'steered'}`;

/**
 * Up to `n` of the run's non-probe requests that succeeded, spread over the groups (in turn, one
 * from each that has one left) and within a group evenly over the run; in the run's order.
 */
export function pickReplays(outcomes: readonly Outcome[], n: number): Outcome[] {
  const groups = new Map<string, Outcome[]>();
  for (const o of outcomes) {
    if (o.plan.probe !== undefined || o.status !== 200 || o.error) continue;
    const key = groupOf(o);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(o);
  }
  const lists = [...groups.values()];
  const quota = lists.map(() => 0);
  let left = Math.min(
    n,
    lists.reduce((s, list) => s + list.length, 0),
  );
  while (left > 0) {
    for (let g = 0; g < lists.length && left > 0; g++) {
      if (quota[g] < lists[g].length) {
        quota[g]++;
        left--;
      }
    }
  }
  return lists
    .flatMap((list, g) =>
      Array.from({ length: quota[g] }, (_, j) => list[Math.floor(((j + 0.5) * list.length) / quota[g])]),
    )
    .sort((a, b) => a.plan.index - b.plan.index);
}

/** How the answer to a replay differs from the one the run got: text, token ids (where both have them), finish reason, usage. */
export function differences(got: Answer, again: Answer): string[] {
  const found: string[] = [];
  const same = (what: string, a: unknown, b: unknown) =>
    JSON.stringify(a) === JSON.stringify(b) ||
    found.push(`${what} ${JSON.stringify(a)}, replayed ${JSON.stringify(b)}`);
  same('text', got.text, again.text);
  if (got.tokenIds && again.tokenIds) same('token ids', got.tokenIds, again.tokenIds);
  same('finish_reason', got.finishReason, again.finishReason);
  same('usage', got.usage, again.usage);
  return found;
}

/**
 * Asks again for the answers of `picked`, one at a time, non-streaming with the same body (`send`
 * sends and checks a request). Sampling is seeded per request, and an answer depends neither on its
 * batch neighbours nor on streaming, so another answer means the run's was not its request's: that
 * request gets a `mismatch` error. Stops early when `stop` fires.
 */
export async function replay(
  picked: readonly Outcome[],
  send: (plan: Planned) => Promise<Outcome>,
  stop?: AbortSignal,
): Promise<ReplayReport> {
  const r: ReplayReport = {
    requests: [],
    same: 0,
    different: 0,
    failed: [],
    by_status: { '/v1/generate': {}, '/v1/completions': {} },
    generated_tokens: 0,
  };
  for (const original of picked) {
    if (stop?.aborted) break;
    const { plan } = original;
    const again = await send({ ...plan, stream: false, body: { ...plan.body, stream: false } });
    r.requests.push({ request: plan.index, what: groupOf(original) });
    if (again.status !== undefined)
      r.by_status[plan.endpoint][again.status] = (r.by_status[plan.endpoint][again.status] ?? 0) + 1;
    r.generated_tokens += again.answer?.usage.completion_tokens ?? 0;
    if (again.error) {
      r.failed.push({ request: plan.index, message: `${again.error.kind}: ${again.error.message}` });
      continue;
    }
    const found = differences(original.answer!, again.answer!);
    if (found.length === 0) r.same++;
    else {
      r.different++;
      original.error = { kind: 'mismatch', message: `asked for again (non-streaming, same body): ${found.join('; ')}` };
    }
  }
  return r;
}
