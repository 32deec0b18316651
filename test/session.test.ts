import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { type Harness, harness, post, queueMode } from './helpers/api.ts';

// A request owns every run it starts: one that is refused, or whose client goes, leaves nothing
// running (the engine's streams, the request gauges and the KV cache back to idle within a
// second); and what the server can never admit is refused with 422, not "retry later".

const root = mkdtempSync(join(tmpdir(), 'steerd-session-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 4, embd: 64, heads: 4, ctx: 256, seed: 5, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const H = 64;

const gauge = (metrics: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);

/** What is still running: the engine's streams, the request gauges, the KV cache in use. */
async function load(h: Harness) {
  const m = (await h.app.inject('/metrics')).body;
  return {
    streams: h.svc.engine.inFlight,
    running: gauge(m, 'steerd:num_requests_running'),
    waiting: gauge(m, 'steerd:num_requests_waiting'),
    kv: gauge(m, 'steerd:kv_cache_usage_perc') || 0,
    admitted: h.svc.inFlight,
  };
}

/** Waits up to a second for the server to be idle, then says what is left. */
async function idle(t: Test, h: Harness, what: string) {
  const quiet = { streams: 0, running: 0, waiting: 0, kv: 0, admitted: 0 };
  let got = await load(h);
  for (const t0 = Date.now(); Date.now() - t0 < 1000 && JSON.stringify(got) !== JSON.stringify(quiet); ) {
    await new Promise((r) => setTimeout(r, 20));
    got = await load(h);
  }
  t.same(got, quiet, `${what}: idle within a second`);
}

t.test('a refused request leaves none of its runs running', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  const made = await post(h.app, '/v1/generate', { prompt: 'Once upon a time', max_new_tokens: 200, temperature: 0 });
  t.equal(made.statusCode, 200, made.body.slice(0, 200));
  const run = made.json().receipt.runs[0];

  // a replay whose last run holds a token the model does not have: 400, and the 254 before it never run
  const receipt = { ...made.json().receipt, runs: [...Array(254).fill(run), { ...run, prompt: [99999] }] };
  const replay = await post(h.app, '/v1/replay', { receipt });
  t.equal(replay.statusCode, 400, replay.body.slice(0, 200));
  t.match(replay.json().error.message, /receipt\.runs\[254\]: prompt token 99999/);
  await idle(t, h, 'refused replay');

  // a control arm refused (the random vector times coeff leaves float32's range): the steered run does not go on
  const ones = Array(H).fill(1);
  const arm = await post(h.app, '/v1/generate', {
    prompt: 'Once upon a time',
    max_new_tokens: 200,
    interventions: [{ vector: { values: ones }, layer: 1, coeff: 3e38 }],
    compare: ['random'],
  });
  t.equal(arm.statusCode, 422, arm.body.slice(0, 200));
  t.match(arm.json().error.message, /beyond float32's range/);
  await idle(t, h, 'refused control arm');
});

t.test('a client that goes cancels every run of its request', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = h.app.server.address() as { port: number };
  for (const [url, body] of [
    ['/v1/completions', { prompt: ['One', 'Two', 'Three'], n: 4, max_tokens: 200, stream: true }],
    [
      '/v1/sweep',
      {
        prompt: 'One',
        vector: { values: Array(H).fill(0.1) },
        layers: [1, 2],
        coeffs: [1, 2, 3],
        max_new_tokens: 200,
        stream: true,
      },
    ],
    [
      '/v1/generate',
      { prompt: 'One', max_new_tokens: 200, telemetry: true, compare: ['baseline', 'negated'], stream: true },
    ],
  ] as const) {
    const ac = new AbortController();
    const res = await fetch(`http://127.0.0.1:${port}${url}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: ac.signal,
    });
    t.equal(res.status, 200, url);
    // the runs are under way (the stream has begun), then the client goes
    await res.body!.getReader().read();
    ac.abort();
    await idle(t, h, `${url}, disconnected`);
  }
});

t.test('what can never be admitted is 422, naming the limit; what is full now, 429', async (t) => {
  const h = await harness(model, (c) => ({ ...c, limits: { ...c.limits, queueDepth: 16 } }));
  t.teardown(() => h.close());
  const many = await post(h.app, '/v1/completions', {
    prompt: Array.from({ length: 5 }, (_, i) => `Prompt ${i}`),
    n: 4,
    max_tokens: 4,
  });
  t.equal(many.statusCode, 422, many.body.slice(0, 200));
  t.equal(many.headers['retry-after'], undefined, 'not "retry later"');
  t.match(many.json().error, {
    code: 'unprocessable',
    message: /20 generations.*at most 16.*STEERD_QUEUE_DEPTH/,
    details: { needed: 20, queue_depth: 16 },
  });
  const made = await post(h.app, '/v1/generate', { prompt: 'x', max_new_tokens: 2, temperature: 0 });
  const receipt = made.json().receipt;
  const replay = await post(h.app, '/v1/replay', { receipt: { ...receipt, runs: Array(17).fill(receipt.runs[0]) } });
  t.equal(replay.statusCode, 422, replay.body.slice(0, 200));
  t.match(replay.json().error.message, /receipt\.runs needs 17 generations.*STEERD_QUEUE_DEPTH/);
  // full now: 429 with Retry-After
  const long = post(h.app, '/v1/completions', { prompt: Array(4).fill('x'), n: 4, max_tokens: 100 });
  for (const t0 = Date.now(); h.svc.inFlight === 0 && Date.now() - t0 < 10_000; )
    await new Promise((r) => setImmediate(r));
  const full = await post(h.app, '/v1/generate', { prompt: 'x', max_new_tokens: 2 });
  t.equal(full.statusCode, 429, full.body.slice(0, 200));
  t.equal(full.headers['retry-after'], '1');
  t.equal((await long).statusCode, 200);
});

t.test('a replay is held to the limits of the routes whose runs it repeats', async (t) => {
  const h = await harness(model, (c) => ({
    ...c,
    limits: { ...c.limits, maxNewTokens: 64, maxInterventions: 4, maxSweepCells: 4 },
  }));
  t.teardown(() => h.close());
  const vector = { values: Array.from({ length: H }, (_, i) => Math.sin(i)) };
  const made = await post(h.app, '/v1/sweep', {
    prompt: 'Hello',
    vector,
    layers: [1],
    coeffs: [1, 2],
    max_new_tokens: 4,
    temperature: 0,
  });
  t.equal(made.statusCode, 200, made.body.slice(0, 200));
  const receipt = made.json().receipt;
  const replay = (runs: unknown[]) => post(h.app, '/v1/replay', { receipt: { ...receipt, runs } });
  t.equal((await replay(receipt.runs)).statusCode, 200, 'as made');
  const [base, cell] = receipt.runs;

  const long = await replay([base, { ...cell, max_new_tokens: 200 }]);
  t.equal(long.statusCode, 422, long.body.slice(0, 200));
  t.match(long.json().error.message, /receipt\.runs\[1\]\.max_new_tokens \(200\).*limit \(64, STEERD_MAX_NEW_TOKENS\)/);

  const crowded = await replay([{ ...cell, interventions: Array(20).fill(cell.interventions[0]) }]);
  t.equal(crowded.statusCode, 422, crowded.body.slice(0, 200));
  t.match(
    crowded.json().error.message,
    /receipt\.runs\[0\]\.interventions: 20 interventions.*limit \(4, STEERD_MAX_INTERVENTIONS\)/,
  );

  // a sweep's runs (a baseline and cells, their interventions differing): at most the cells a sweep may have
  const cells = [1, 2, 3, 4, 5].map((c) => ({
    ...cell,
    interventions: [{ ...cell.interventions[0], applied_coeff: c }],
  }));
  const wide = await replay([base, ...cells]);
  t.equal(wide.statusCode, 422, wide.body.slice(0, 200));
  t.match(wide.json().error.message, /receipt\.runs: .*5 cells.*limit \(4, STEERD_MAX_SWEEP_CELLS\)/);
  t.equal((await replay([base, ...cells.slice(0, 4)])).statusCode, 200, 'four cells and the baseline');
  await idle(t, h, 'after the replays');
});

t.test(
  'a run posted and never read leaves no stream behind once it ends',
  { skip: queueMode && 'the embedded engine' },
  async (t) => {
    const h = await harness(model);
    t.teardown(() => h.close());
    const ac = new AbortController();
    // posted now (validated, then sent to the engine thread), never iterated: its request went away
    h.svc.engine.generate({ prompt: [464, 3290], max_new_tokens: 200 }, { signal: ac.signal });
    t.equal(h.svc.engine.inFlight, 1, 'posted');
    ac.abort();
    await idle(t, h, 'cancelled and never read');
  },
);

t.test('fuzzed receipts and multi-run bodies: never a 5xx, and nothing left running', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  const vector = { values: Array.from({ length: H }, (_, i) => Math.sin(i)) };
  const made = await post(h.app, '/v1/generate', {
    prompt: 'Once upon a time',
    max_new_tokens: 4,
    temperature: 0,
    interventions: [{ vector, layer: 1, coeff: 2 }],
    compare: ['baseline', 'negated'],
  });
  t.equal(made.statusCode, 200, made.body.slice(0, 200));
  const receipt = made.json().receipt;
  const bodies: Record<string, Record<string, unknown>> = {
    '/v1/generate': {
      prompt: 'One',
      max_new_tokens: 3,
      interventions: [{ vector, layer: 1, coeff: 1 }],
      telemetry: true,
      compare: ['baseline', 'negated', 'random'],
    },
    '/v1/completions': { prompt: ['One', 'Two'], n: 2, max_tokens: 3, logprobs: 1, echo: true },
    '/v1/sweep': { prompt: 'One', vector, layers: [1, 2], coeffs: [1, -1], max_new_tokens: 3 },
  };
  const value = fc.oneof(
    fc.jsonValue(),
    fc.constantFrom(-1, 0, 1, 2 ** 31, 2 ** 53, 1e308, -1e308, 0.5, '', 'x'.repeat(300), [], [[]], [99999], null),
    fc.array(fc.double({ noNaN: true }), { maxLength: 70 }),
    fc.array(fc.integer({ min: -2, max: 60000 }), { maxLength: 8 }),
  );
  const statuses = new Map<number, number>();
  const seen = (s: number) => statuses.set(s, (statuses.get(s) ?? 0) + 1);
  const runKeys = Object.keys(receipt.runs[0]);
  // a receipt with one field of one run (or of the receipt) replaced, runs dropped or repeated
  const receipts = fc.record({
    run: fc.nat({ max: receipt.runs.length - 1 }),
    key: fc.oneof(fc.constantFrom(...runKeys), fc.constantFrom('interventions.0.coeff', 'interventions.0.layer')),
    value,
    copies: fc.constantFrom(1, 2, 5),
    top: fc.option(fc.record({ key: fc.constantFrom(...Object.keys(receipt)), value }), { nil: undefined }),
  });
  await fc.assert(
    fc.asyncProperty(receipts, async ({ run, key, value, copies, top }) => {
      const runs = structuredClone(receipt.runs) as Record<string, unknown>[];
      const [k, i, field] = key.split('.');
      const target = field ? (runs[run][k] as Record<string, unknown>[] | undefined)?.[+i] : runs[run];
      if (target) target[field ?? k] = value;
      const body = { ...receipt, runs: Array(copies).fill(runs).flat(), ...(top && { [top.key]: top.value }) };
      const res = await post(h.app, '/v1/replay', { receipt: body });
      seen(res.statusCode);
      return res.statusCode < 500;
    }),
    { numRuns: 60, seed: 21 },
  );
  await idle(t, h, 'after the fuzzed receipts');
  const mutations = fc.record({
    url: fc.constantFrom(...Object.keys(bodies)),
    key: fc.constantFrom('prompt', 'n', 'max_tokens', 'max_new_tokens', 'compare', 'telemetry', 'layers', 'coeffs'),
    value,
  });
  await fc.assert(
    fc.asyncProperty(mutations, async ({ url, key, value }) => {
      const res = await post(h.app, url, { ...bodies[url], [key]: value });
      seen(res.statusCode);
      return res.statusCode < 500;
    }),
    { numRuns: 60, seed: 21 },
  );
  await idle(t, h, 'after the fuzzed bodies');
  t.ok(statuses.get(200), 'some fuzzed requests were served');
  t.ok(
    [...statuses.keys()].some((s) => s >= 400),
    'some were refused',
  );
});
