import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { Config } from '../src/config.ts';
import { CrossChecks, checkAnswer } from '../src/loadtest/checks.ts';
import type { Answer } from '../src/loadtest/client.ts';
import { main } from '../src/loadtest/main.ts';
import { isLoopback, parseOptions } from '../src/loadtest/options.ts';
import type { Outcome } from '../src/loadtest/outcome.ts';
import { parsePrometheus, total } from '../src/loadtest/prometheus.ts';
import { pickReplays } from '../src/loadtest/replay.ts';
import type { Report } from '../src/loadtest/report.ts';
import { readSse } from '../src/loadtest/sse.ts';
import { percentile, summarize } from '../src/loadtest/stats.ts';
import { type ModelInfo, type Planned, Workload } from '../src/loadtest/workload.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { type Harness, harness } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';

const redis = await testRedis();
const root = mkdtempSync(join(tmpdir(), 'steerd-loadtest-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 4, embd: 64, heads: 4, ctx: 256, seed: 3, initScale: 10 });
t.teardown(async () => {
  await redis.cleanup();
  rmSync(root, { recursive: true, force: true });
});

/** Runs the load test against `h`, listening on a free port; returns its exit status, report (read back from --json) and table. */
async function loadTest(t: Test, h: Harness, name: string, args: string[]) {
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = h.app.server.address() as { port: number };
  const json = join(root, `${name}.json`);
  const out: string[] = [];
  const err: string[] = [];
  const argv = [
    'node',
    'loadtest',
    '--url',
    `http://127.0.0.1:${port}`,
    '--json',
    json,
    '--max-new-tokens',
    '4',
    ...args,
  ];
  const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
  t.same(err, [], `${name}: nothing on stderr`);
  return { code, report: JSON.parse(readFileSync(json, 'utf8')) as Report, table: out.join('\n') };
}

/**
 * The report's counts equal the server's own counters (read in-process, independently of /metrics
 * parsing), which also count the replays: the report's /metrics comparison does not.
 */
async function agreesWithServer(t: Test, h: Harness, report: Report) {
  for (const c of report.server.comparisons)
    t.ok(c.agree, `${c.what}: client ${c.client}, server /metrics ${c.server}`);
  const http = (await h.svc.metrics.http.get()).values;
  for (const route of ['/v1/generate', '/v1/completions'] as const) {
    const server = Object.fromEntries(
      http.filter((v) => v.labels.route === route).map((v) => [v.labels.status, v.value]),
    );
    const client = { ...report.requests.by_status[route] };
    for (const [status, n] of Object.entries(report.replay.by_status[route]))
      client[status] = (client[status] ?? 0) + n;
    t.same(client, server, `${route}: the client's statuses (the run's and the replays') are the server's`);
  }
  const generated = report.throughput.generated_tokens + report.replay.generated_tokens;
  t.equal(generated, (await h.svc.metrics.generationTokens.get()).values[0].value, 'generated tokens');
  const vectors = (await h.app.inject('/v1/vectors')).json().data;
  t.same(vectors, [], 'the registered vector is deleted');
}

const SIXTY = ['--duration', '60', '--max-requests', '60', '--probe-fraction', '0.4'];

/** Every kind of request was sent, and every answer passed its checks. */
function clean(t: Test, { code, report, table }: Awaited<ReturnType<typeof loadTest>>) {
  t.equal(code, 0, 'exit status 0');
  t.equal(report.errors.total, 0, `no errors: ${JSON.stringify(report.errors.examples)}`);
  // bounded by the request count, not the clock: the same requests however fast this machine is (with the
  // default seed, 60 hold every kind of request, the registered vector and repeated greedy probes)
  t.equal(report.requests.sent, 60);
  for (const [kind, n] of Object.entries(report.requests.by_kind))
    t.ok(n.steered > 0 && n.unsteered > 0, `${kind}: steered and unsteered`);
  t.ok(report.requests.by_steering.named > 0 && report.requests.greedy_probes > 0, 'named vector and greedy probes');
  t.equal(report.latency_ms.e2e.n, report.requests.sent);
  t.ok(report.latency_ms.ttft_stream.n > 0 && report.latency_ms.ttft_stream.p50 <= report.latency_ms.e2e.max);
  // the answers asked for again, non-streaming, are the run's: over both endpoints, streamed or not, steered or not
  t.match(report.replay, { same: 16, different: 0 });
  t.same(report.replay.failed, [], 'every replay answered');
  t.equal(report.replay.requests.length, 16);
  t.equal(new Set(report.replay.requests.map((r) => r.what)).size, 8, 'every kind replayed, steered and not');
  t.match(table, /errors: none/);
  t.match(
    table,
    /replay: 16 answers asked for again \(non-streaming, same body and seed\): 16 the same, 0 different, 0 failed/,
  );
  t.match(table, /generated tokens\s+(\d+)\s+\1\s+agree/);
}

t.test('embedded mode, closed loop with a ramp: no errors, no mismatches, the counts of /metrics', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  const run = await loadTest(t, h, 'embedded', ['--concurrency', '4', '--ramp', '0.5', ...SIXTY]);
  clean(t, run);
  await agreesWithServer(t, h, run.report);
});

t.test('Redis mode (worker in the API process), open loop with a ramp', { skip: redis.skip }, async (t) => {
  const h = await harness(model, (c: Config) => ({
    ...c,
    redisUrl: redis.url,
    redisPrefix: redis.prefix,
    worker: true,
  }));
  t.teardown(() => h.close());
  const run = await loadTest(t, h, 'redis', ['--rate', '40', '--ramp', '0.5', ...SIXTY]);
  clean(t, run);
  // 1 → 40 requests/s over 0.5 s (about 10 requests), then the other 50 at 40/s
  t.ok(run.report.wall_s > 1.5, `open loop: the schedule's pace (${run.report.wall_s} s)`);
  await agreesWithServer(t, h, run.report);
});

t.test('refusals are counted by status, as the server counts them', async (t) => {
  const h = await harness(model, (c) => ({ ...c, limits: { ...c.limits, queueDepth: 1 } }));
  t.teardown(() => h.close());
  const { code, report, table } = await loadTest(t, h, 'refusals', [
    '--concurrency',
    '6',
    '--duration',
    '1',
    '--max-requests',
    '60',
  ]);
  t.equal(code, 1, 'exit status 1');
  t.ok(report.errors.by_kind['429'] > 0, `429s: ${JSON.stringify(report.errors.by_kind)}`);
  t.equal(Object.keys(report.errors.by_kind).join(), '429', 'and nothing else');
  t.match(report.errors.examples[0], { kind: '429', message: /^queue_full: / });
  t.match(table, /POST \/v1\/\w+ 429\s+(\d+)\s+\1\s+agree/);
  // a refusal comes in a moment: the latencies are of the requests answered
  t.ok(
    report.requests.ok > 0 && report.requests.ok < report.requests.sent,
    `${report.requests.ok} of ${report.requests.sent} ok`,
  );
  t.equal(report.latency_ms.e2e.n, report.requests.ok, 'latencies of the ok requests only');
  t.match(table, new RegExp(`the ${report.errors.total} failed requests are left out: see errors`));
  await agreesWithServer(t, h, report);
});

t.test('an answer swapped with another request’s of the same prompt length is caught by the replay', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  // each non-streaming sampled completion gets the text of the one before, with its own id and usage: a swap
  // between prompts of the same length in tokens, which no check of the answer alone can see; a replay
  // (its prompt seen before) gets its true answer
  const seen = new Set<string>();
  const firsts = new WeakSet<object>();
  const swapped = new Set<number>();
  let previous: string | undefined;
  h.app.addHook('preHandler', async (req) => {
    if (req.url !== '/v1/completions') return;
    const { prompt } = req.body as { prompt: string };
    if (!seen.has(prompt)) firsts.add(req);
    seen.add(prompt);
  });
  h.app.addHook('onSend', async (req, reply, payload) => {
    const body = req.body as { prompt: string; stream: boolean; temperature: number };
    if (!firsts.has(req) || reply.statusCode !== 200 || body.stream || body.temperature === 0) return payload;
    const answer = JSON.parse(payload as string);
    const text = answer.choices[0].text;
    if (previous !== undefined && previous !== text) {
      answer.choices[0].text = previous;
      swapped.add(Number(/request (\d+)/.exec(body.prompt)![1]));
    }
    previous = text;
    return JSON.stringify(answer);
  });
  const { code, report, table } = await loadTest(t, h, 'swapped', SIXTY);
  const caught = report.replay.requests.filter((r) => swapped.has(r.request));
  t.ok(caught.length > 0, `swapped answers replayed: ${caught.length} of ${swapped.size}`);
  t.equal(code, 1, 'exit status 1');
  t.match(report.replay, { same: report.replay.requests.length - caught.length, different: caught.length });
  t.same(report.replay.failed, [], 'every replay answered');
  t.same(report.errors.by_kind, { mismatch: caught.length }, 'each one a mismatch, and nothing else');
  for (const e of report.errors.examples) {
    t.match(e, {
      what: '/v1/completions non-stream',
      message: /^asked for again \(non-streaming, same body\): text "/,
    });
    t.ok(swapped.has(e.request), `#${e.request} was swapped`);
  }
  t.match(table, new RegExp(`${caught.length} different \\(mismatch errors\\)`));
  await agreesWithServer(t, h, report);
});

// without the limit, the first call waits for ever: failed after a minute
t.test('set-up and tear-down calls have a time limit: --timeout', { timeout: 60_000 }, async (t) => {
  const written: string[] = [];
  const io = { out: () => undefined, err: (s: string) => written.push(s) };
  const argv = (port: number, ...a: string[]) => [
    'node',
    'loadtest',
    '--url',
    `http://127.0.0.1:${port}`,
    '--max-new-tokens',
    '4',
    ...(a.includes('--timeout') ? [] : ['--timeout', '1']),
    ...a,
  ];

  const silent = createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    silent.closeAllConnections();
    silent.close();
  });
  const quick = ['--timeout', '0.3'];
  t.equal(
    await main(argv((silent.address() as { port: number }).port, ...quick), io),
    2,
    'a server that never answers: 2',
  );
  t.match(
    written.at(-1),
    /^loadtest: cannot read the model from http:\/\/127\.0\.0\.1:\d+: GET \/v1\/model: no answer within 0.3 s \(--timeout\)$/,
  );

  // a Redis-mode API with no worker yet: /v1/model has no norms to size the coefficients with
  const unmeasured = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(
      JSON.stringify({ id: 'm', name: 'm', n_layer: 2, n_embd: 4, limits: { max_new_tokens: 16 }, resid_norms: null }),
    );
  });
  await new Promise<void>((resolve) => unmeasured.listen(0, '127.0.0.1', resolve));
  t.teardown(() => unmeasured.close());
  t.equal(
    await main(argv((unmeasured.address() as { port: number }).port, ...quick), io),
    2,
    'a server without its norms: 2',
  );
  t.match(written.at(-1), /has not measured its residual-stream norms yet \(in Redis mode: no worker has answered\)/);

  // the server holds the vector calls of one method until the end
  const h = await harness(model);
  let hold = 'POST';
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  h.app.addHook('onRequest', async (req) => {
    if (req.method === hold && req.url.startsWith('/v1/vectors')) await held;
  });
  t.teardown(async () => {
    release();
    await h.close();
  });
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = h.app.server.address() as { port: number };
  t.equal(await main(argv(port), io), 2, 'no answer to the registration: 2');
  t.match(written.at(-1), /^loadtest: POST \/v1\/vectors: no answer within 1 s \(--timeout\)$/);

  // the requests themselves must finish within the limit: a busy machine (CI runs test files side
  // by side) took more than a second for some
  hold = 'DELETE';
  const out: string[] = [];
  const code = await main(argv(port, '--timeout', '8', '--max-requests', '4', '--replay', '2'), {
    out: (s) => out.push(s),
    err: io.err,
  });
  t.equal(code, 0, 'no answer to the deletion: a warning, and the report');
  t.match(
    written.at(-1),
    /^could not delete vector loadtest-\w+: DELETE \/v1\/vectors\/loadtest-\w+: no answer within 8 s \(--timeout\)$/,
  );
  t.match(out.join('\n'), /4 requests \(4 ok\)/);
});

t.test('options: loopback only unless --allow-remote, defaults', async (t) => {
  const argv = (...a: string[]) => ['node', 'loadtest', ...a];
  const written: string[] = [];
  const io = { out: () => undefined, err: (s: string) => written.push(s) };
  const o = parseOptions(argv(), io);
  t.match(o, {
    url: 'http://127.0.0.1:8080',
    concurrency: 4,
    duration: 10,
    maxRequests: 1000,
    timeout: 60,
    maxNewTokens: 16,
    namedVector: true,
    replay: 16,
    seed: 1,
  });
  t.equal(o.rate, undefined, 'closed loop by default');
  for (const u of ['http://localhost:1', 'http://127.0.0.2', 'http://[::1]:8080']) t.ok(isLoopback(new URL(u)), u);
  for (const u of ['http://10.0.0.1', 'http://example.com', 'http://127.0.0.1.example.com'])
    t.notOk(isLoopback(new URL(u)), u);
  t.throws(() => parseOptions(argv('--steered-fraction', '1.5'), io), { code: 'commander.invalidArgument' });
  t.throws(() => parseOptions(argv('--url', 'ftp://127.0.0.1'), io), { code: 'commander.error' });
  t.throws(() => parseOptions(argv('--ramp', '5', '--duration', '2'), io), { code: 'commander.error' });
  t.match(written.at(-1), /--ramp 5 is longer than --duration 2/);
  t.equal(await main(argv('--url', 'http://example.com:8080'), io), 2, 'remote: refused, 2');
  t.match(
    written.at(-1),
    /refusing to load-test http:\/\/example.com:8080: not a loopback address.*denial-of-service.*--allow-remote/,
  );
  t.equal(parseOptions(argv('--url', 'http://example.com:8080/', '--allow-remote'), io).url, 'http://example.com:8080');
  t.equal(await main(argv('--url', 'http://127.0.0.1:9'), io), 2, 'unreachable: 2');
  t.match(written.at(-1), /^loadtest: cannot read the model from http:\/\/127.0.0.1:9/);
});

t.test(
  'the replay: a sample of the successful non-probe requests, spread over the kinds and over the run',
  async (t) => {
    const outcome = (
      index: number,
      endpoint: Planned['endpoint'],
      stream: boolean,
      steered: boolean,
      more: Partial<Outcome> = {},
    ): Outcome => ({
      plan: { index, endpoint, stream, steering: steered ? 'inline' : 'none' } as Planned,
      status: 200,
      e2eMs: 1,
      ...more,
    });
    const outcomes = Array.from({ length: 80 }, (_, i) =>
      outcome(i, i % 2 ? '/v1/generate' : '/v1/completions', i % 4 < 2, i % 8 < 4),
    );
    outcomes.push(
      outcome(80, '/v1/generate', true, true, {
        plan: { index: 80, endpoint: '/v1/generate', stream: true, steering: 'none', probe: '0/none' } as Planned,
      }),
      outcome(81, '/v1/generate', true, true, { status: 429, error: { kind: '429', message: 'queue_full' } }),
      outcome(82, '/v1/generate', true, true, { error: { kind: 'mismatch', message: 'seed' } }),
    );
    const picked = pickReplays(outcomes, 16).map((o) => o.plan.index);
    t.equal(picked.length, 16);
    t.notOk(
      picked.some((i) => i >= 80),
      'no probe, no failed request',
    );
    t.same(
      picked,
      [...picked].sort((a, b) => a - b),
      "in the run's order",
    );
    // 8 kinds of 10 requests each: 2 of each, a quarter and three quarters into the run
    for (let k = 0; k < 8; k++)
      t.same(
        picked.filter((i) => i % 8 === k),
        [k + 16, k + 56],
        `kind ${k}`,
      );
    t.equal(pickReplays(outcomes.slice(0, 5), 16).length, 5, 'all there are, when fewer');
    t.same(pickReplays(outcomes, 0), [], '--replay 0: none');
    // a kind with fewer than its share leaves the rest to the others
    const few = [
      ...outcomes.slice(0, 8),
      ...Array.from({ length: 20 }, (_, i) => outcome(100 + i, '/v1/generate', true, true)),
    ];
    t.equal(pickReplays(few, 16).length, 16);
  },
);

t.test('prompts: the requests around one seldom share its length in tokens', async (t) => {
  const info: ModelInfo = {
    id: 'm',
    name: 'm',
    n_layer: 2,
    n_embd: 8,
    limits: { max_new_tokens: 16 },
    resid_norms: { layers: [0, 1, 2].map((layer) => ({ layer, median: 1 })) },
  };
  const opts = { seed: 1, maxNewTokens: 4, steeredFraction: 0.5, streamFraction: 0.5, probeFraction: 0 };
  const workload = new Workload(opts, info, 'abcd1234');
  const lengths = Array.from({ length: 400 }, (_, i) => workload.next(i).promptTokens);
  const share = new Map<number, number>();
  for (const n of lengths) share.set(n, (share.get(n) ?? 0) + 1 / lengths.length);
  // the chance that two requests have prompts of the same length (under a fifth when the length cycled over 5 values)
  const same = [...share.values()].reduce((s, p) => s + p * p, 0);
  t.ok(same < 0.06, `two prompts of the same length: ${(same * 100).toFixed(1)} %`);
});

t.test('percentiles', async (t) => {
  t.equal(percentile([1, 2, 3, 4], 50), 2.5);
  t.equal(percentile([1, 2, 3, 4], 100), 4);
  t.equal(percentile([7], 99), 7);
  t.ok(Number.isNaN(percentile([], 50)));
  t.match(summarize([5, 1, 3]), { n: 3, mean: 3, p50: 3, max: 5 });
});

t.test('server-sent events split anywhere, CRLF, comments, several data lines', async (t) => {
  const text =
    ': keep-alive\r\nevent: token\r\ndata: {"a":1}\r\n\r\ndata: one\ndata: two\n\nevent: done\ndata: [DONE]\n\ndata: unfinished';
  const bytes = new TextEncoder().encode(text);
  for (const size of [1, 2, 7, bytes.length]) {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
        c.close();
      },
    });
    const got = [];
    for await (const e of readSse(body)) got.push(e);
    t.same(
      got,
      [
        { event: 'token', data: '{"a":1}' },
        { event: 'message', data: 'one\ntwo' },
        { event: 'done', data: '[DONE]' },
      ],
      `chunks of ${size} bytes`,
    );
  }
});

t.test('Prometheus text', async (t) => {
  const s = parsePrometheus(
    '# HELP x\nsteerd:http_requests_total{route="/v1/generate",status="200"} 3\nsteerd:http_requests_total{route="/v1/generate",status="429"} 2\nup 1\n',
  );
  t.equal(total(s, 'steerd:http_requests_total', { route: '/v1/generate' }), 5);
  t.equal(total(s, 'steerd:http_requests_total', { status: '429' }), 2);
  t.equal(total(s, 'up'), 1);
});

t.test('the checks catch an answer that is not its request’s', async (t) => {
  const plan: Planned = {
    index: 3,
    endpoint: '/v1/generate',
    stream: true,
    steering: 'inline',
    probe: '0/inline',
    body: {},
    seed: 42,
    promptTokens: 5,
    maxTokens: 4,
    interventions: [{ vector: null, hash: 'abc', layer: 1, coeff: 2 }],
  };
  const good: Answer = {
    ids: ['gen-1'],
    text: 'abcd',
    finishReason: 'length',
    usage: { prompt_tokens: 5, completion_tokens: 4 },
    tokenIds: [1, 2, 3, 4],
    streamedText: 'abcd',
    seed: 42,
    interventions: [{ vector: null, hash: 'abc', layer: 1, coeff: 2 }],
  };
  t.same(checkAnswer(plan, good), []);
  const bad = (change: Partial<Answer>, problem: RegExp) =>
    t.match(checkAnswer(plan, { ...good, ...change }).join(), problem);
  bad({ seed: 43 }, /seed 43, sent 42/);
  bad({ usage: { prompt_tokens: 6, completion_tokens: 4 } }, /prompt_tokens 6, the prompt has 5/);
  bad({ usage: { prompt_tokens: 5, completion_tokens: 3 } }, /3 completion tokens, finish_reason length/);
  bad({ tokenIds: [1, 2, 3] }, /3 tokens received/);
  bad({ streamedText: 'abc' }, /do not add up/);
  bad({ ids: ['gen-1', 'gen-2'] }, /2 response ids/);
  bad({ interventions: [{ vector: null, hash: 'abd', layer: 1, coeff: 2 }] }, /interventions echoed as/);
  const cross = new CrossChecks();
  t.same(cross.check(plan, good), [], 'the first answer to a probe is remembered');
  t.match(
    cross.check(plan, { ...good, ids: ['gen-2'], text: 'abce' }).join(),
    /greedy probe 0\/inline: "abce", request #3 got "abcd"/,
  );
  t.match(cross.check({ ...plan, probe: undefined }, good).join(), /gen-1 was already received/);
});
