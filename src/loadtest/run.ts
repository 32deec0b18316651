import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Rng } from '../util/rng.js';
import { CrossChecks, checkAnswer } from './checks.js';
import { Api, errorMessage, readAnswer, StreamError } from './client.js';
import type { LoadTestOptions } from './options.js';
import type { Outcome } from './outcome.js';
import { parsePrometheus, type Sample, total } from './prometheus.js';
import { pickReplays, replay } from './replay.js';
import { buildReport, HTTP_REQUESTS, type Report, ROUTES } from './report.js';
import { type ModelInfo, type NamedVector, type Planned, randomDirection, Workload } from './workload.js';

/** `timeout`, `network` (fetch's failures carry the socket's as their cause), `stream_error`, or `invalid_response` (not JSON, or not the expected shape). */
function errorKind(e: Error & { cause?: unknown }): string {
  if (e.name === 'TimeoutError') return 'timeout';
  if (e instanceof TypeError && e.cause !== undefined) return 'network';
  return e instanceof StreamError ? 'stream_error' : 'invalid_response';
}

/** Sends one planned request and checks its answer. Never throws: every failure is an outcome. */
async function send(api: Api, plan: Planned, timeoutMs: number, cross: CrossChecks): Promise<Outcome> {
  const sentAt = performance.now();
  let status: number | undefined;
  try {
    const res = await api.fetch(plan.endpoint, {
      method: 'POST',
      body: JSON.stringify(plan.body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    status = res.status;
    if (!res.ok)
      return {
        plan,
        status,
        error: { kind: String(status), message: await errorMessage(res) },
        e2eMs: performance.now() - sentAt,
      };
    const answer = await readAnswer(plan, res, sentAt);
    const e2eMs = performance.now() - sentAt;
    const problems = [...checkAnswer(plan, answer), ...cross.check(plan, answer)];
    return {
      plan,
      status,
      e2eMs,
      answer,
      ...(problems.length && { error: { kind: 'mismatch', message: problems.join('; ') } }),
    };
  } catch (e) {
    const err = e as Error & { cause?: Error };
    const kind = errorKind(err);
    const message = err.cause ? `${err.message}: ${err.cause.message}` : err.message;
    // a response cut off is not a response: the server does not count it either
    const whole = kind !== 'timeout' && kind !== 'network';
    return { plan, status: whole ? status : undefined, error: { kind, message }, e2eMs: performance.now() - sentAt };
  }
}

/** Closed loop: `n` workers, each sending its next request when its last one ends; worker k starts at k/(n−1) of the ramp. */
async function closedLoop(n: number, rampMs: number, more: () => boolean, start: () => Promise<void>): Promise<void> {
  const worker = async (k: number) => {
    if (n > 1) await sleep((rampMs * k) / (n - 1));
    while (more()) await start();
  };
  await Promise.all(Array.from({ length: n }, (_, k) => worker(k)));
}

/** Open loop: requests start on a schedule, `rate` a second (climbing linearly from 1 over the ramp), whatever the answers' pace. */
async function openLoop(rate: number, rampMs: number, more: () => boolean, start: () => Promise<void>): Promise<void> {
  const t0 = performance.now();
  const from = Math.min(1, rate);
  const pending: Promise<void>[] = [];
  let at = t0;
  while (more()) {
    pending.push(start());
    const elapsed = at - t0;
    at += 1000 / (elapsed < rampMs ? from + ((rate - from) * elapsed) / rampMs : rate);
    await sleep(Math.max(0, at - performance.now()));
  }
  await Promise.all(pending);
}

/** Runs requests until the duration or the request budget is spent (or `stop` fires), then waits for those in flight. */
async function drive(
  opts: LoadTestOptions,
  stop: AbortSignal | undefined,
  send: (index: number) => Promise<Outcome>,
): Promise<{ outcomes: Outcome[]; wallMs: number }> {
  const outcomes: Outcome[] = [];
  const t0 = performance.now();
  const deadline = t0 + opts.duration * 1000;
  let issued = 0;
  const more = () => issued < opts.maxRequests && performance.now() < deadline && !stop?.aborted;
  const start = async () => void outcomes.push(await send(issued++));
  const rampMs = opts.ramp * 1000;
  if (opts.rate === undefined) await closedLoop(opts.concurrency, rampMs, more, start);
  else await openLoop(opts.rate, rampMs, more, start);
  return { outcomes: outcomes.sort((a, b) => a.plan.index - b.plan.index), wallMs: performance.now() - t0 };
}

/**
 * /metrics once the server has counted the run's responses: it counts a response when it has
 * sent it, a moment after the client may have read it. Gives up waiting after 2 s (other traffic
 * or lost requests can make the counts differ for good; the report shows it).
 */
async function settledMetrics(api: Api, before: Sample[], answered: number): Promise<Sample[]> {
  const until = performance.now() + 2000;
  for (;;) {
    const after = parsePrometheus(await api.metrics());
    const counted = ROUTES.reduce(
      (s, route) => s + total(after, HTTP_REQUESTS, { route }) - total(before, HTTP_REQUESTS, { route }),
      0,
    );
    if (counted >= answered || performance.now() > until) return after;
    await sleep(50);
  }
}

/** Registers a random unit vector under a name of this run's own. */
async function registerVector(api: Api, model: ModelInfo, runId: string, seed: number): Promise<NamedVector> {
  const name = `loadtest-${runId}`;
  const values = randomDirection(new Rng(seed ^ 0x5eed), model.n_embd);
  const v = await api.json<{ hash: string }>('POST', '/v1/vectors', {
    name,
    values,
    description: 'steerd load test (deleted at the end of the run)',
  });
  return { name, hash: v.hash };
}

export interface RunControl {
  /** Where warnings go. Default console.error. */
  log?: (line: string) => void;
  /** Stops starting requests (those in flight finish, the report is made, the vector deleted). */
  stop?: AbortSignal;
}

/**
 * The load test: reads the model, registers a vector (unless told not to), reads /metrics, sends
 * requests for the duration, reads /metrics again, asks again for some answers (`replay`), deletes
 * the vector, and reports. Throws when the server cannot be used at all (unreachable, refuses the
 * set-up or does not answer it within --timeout).
 */
export async function runLoadTest(
  opts: LoadTestOptions,
  { log = console.error, stop }: RunControl = {},
): Promise<Report> {
  const timeoutMs = opts.timeout * 1000;
  const api = new Api(opts.url, opts.apiKey, timeoutMs);
  const model = await api.json<ModelInfo>('GET', '/v1/model').catch((e: Error) => {
    throw new Error(
      `cannot read the model from ${opts.url}: ${e.cause instanceof Error ? e.cause.message : e.message}`,
    );
  });
  if (!model.resid_norms) {
    // the steered requests' coefficients are sized from them
    throw new Error(
      `${opts.url} has not measured its residual-stream norms yet (in Redis mode: no worker has answered); start a worker, or wait, and run again`,
    );
  }
  if (opts.maxNewTokens > model.limits.max_new_tokens) {
    throw new Error(
      `--max-new-tokens ${opts.maxNewTokens} is above the server's limit of ${model.limits.max_new_tokens}`,
    );
  }
  const runId = randomBytes(4).toString('hex');
  const named = opts.namedVector ? await registerVector(api, model, runId, opts.seed) : undefined;
  try {
    const workload = new Workload(opts, model, runId, named);
    const cross = new CrossChecks();
    const before = parsePrometheus(await api.metrics());
    const startedAt = new Date();
    const { outcomes, wallMs } = await drive(opts, stop, (i) => send(api, workload.next(i), timeoutMs, cross));
    const after = await settledMetrics(api, before, outcomes.filter((o) => o.status !== undefined).length);
    // after the second read of /metrics: the replays are not the run's traffic
    const replayed = await replay(
      pickReplays(outcomes, opts.replay ?? 0),
      (plan) => send(api, plan, timeoutMs, cross),
      stop,
    );
    return buildReport({
      opts,
      model,
      startedAt,
      wallMs,
      interrupted: stop?.aborted === true,
      outcomes,
      before,
      after,
      replayed,
    });
  } finally {
    if (named)
      await api
        .json('DELETE', `/v1/vectors/${named.name}`)
        .catch((e: Error) => log(`could not delete vector ${named.name}: ${e.message}`));
  }
}
