import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness, post, queueMode } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-srv-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 3, embd: 64, heads: 4, ctx: 512, seed: 4, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

/** Reads server-sent events from a fetch response until `stop` says so. */
async function* events(res: Response) {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data !== undefined) yield { event: ev, data };
    }
  }
}

t.test('SSE streaming and client disconnects, through a listening server', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = h.app.server.address() as { port: number };
  const url = `http://127.0.0.1:${port}`;
  const body = (b: unknown) => ({
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(b),
  });

  const res = await fetch(
    `${url}/v1/generate`,
    body({ prompt: 'Hello', max_new_tokens: 8, temperature: 0, stream: true }),
  );
  t.equal(res.headers.get('content-type'), 'text/event-stream');
  const got: { event: string; data: string }[] = [];
  for await (const e of events(res)) got.push(e);
  t.same(
    got.map((e) => e.event),
    [...Array(8).fill('token'), 'done'],
  );
  const done = JSON.parse(got.at(-1)!.data);
  const text = got
    .slice(0, -1)
    .map((e) => JSON.parse(e.data).text)
    .join('');
  t.equal(text, done.text, 'token deltas add up to the final text');
  const plain = (await (
    await fetch(`${url}/v1/generate`, body({ prompt: 'Hello', max_new_tokens: 8, temperature: 0 }))
  ).json()) as { text: string };
  t.equal(done.text, plain.text, 'same as the non-streaming answer');

  // a stop string that starts like the last token's text is held back, then released at the end
  const lastText = JSON.parse(got.at(-2)!.data).text;
  const held = await fetch(
    `${url}/v1/generate`,
    body({ prompt: 'Hello', max_new_tokens: 8, temperature: 0, stream: true, stop: [`${lastText}qqqq`] }),
  );
  const heldEvents: { event: string; data: string }[] = [];
  for await (const e of events(held)) heldEvents.push(e);
  const streamed = heldEvents
    .filter((e) => e.event === 'token' || e.event === 'text')
    .map((e) => JSON.parse(e.data).text)
    .join('');
  t.ok(
    heldEvents.some((e) => e.event === 'text'),
    'the held-back text comes as a text event',
  );
  t.equal(streamed, JSON.parse(heldEvents.at(-1)!.data).text, 'streamed pieces add up to the final text');

  const oai = await fetch(
    `${url}/v1/completions`,
    body({ prompt: 'Hello', max_tokens: 4, temperature: 0, stream: true }),
  );
  const chunks: string[] = [];
  for await (const e of events(oai)) chunks.push(e.data);
  t.equal(chunks.at(-1), '[DONE]');
  const last = JSON.parse(chunks.at(-2)!);
  t.equal(last.choices[0].finish_reason, 'length');
  t.equal(
    chunks
      .slice(0, -2)
      .map((c) => JSON.parse(c).choices[0].text)
      .join(''),
    plain.text.slice(
      0,
      chunks
        .slice(0, -2)
        .map((c) => JSON.parse(c).choices[0].text)
        .join('').length,
    ),
  );

  const count = async () => {
    const m = await (await fetch(`${url}/metrics`)).text();
    return Number(/steerd:request_success_total\{finished_reason="cancelled"\} (\d+)/.exec(m)?.[1] ?? 0);
  };
  // a streaming client that goes away after 3 tokens
  const ac = new AbortController();
  const long = await fetch(`${url}/v1/generate`, {
    ...body({ prompt: 'Hello', max_new_tokens: 400, temperature: 0, stream: true }),
    signal: ac.signal,
  });
  let n = 0;
  try {
    for await (const e of events(long)) if (e.event === 'token' && ++n === 3) ac.abort();
  } catch {
    // the abort ends the read
  }
  const settle = async (cancelled: number) => {
    const t0 = Date.now();
    while ((h.svc.inFlight > 0 || (await count()) < cancelled) && Date.now() - t0 < 10_000)
      await new Promise((r) => setTimeout(r, 20));
  };
  await settle(1);
  t.equal(await count(), 1, 'the streaming generation was cancelled');
  t.equal(h.svc.inFlight, 0, 'and freed');
  // a non-streaming client that goes away while its generation runs
  const ac2 = new AbortController();
  let settled = false;
  const p = fetch(`${url}/v1/generate`, {
    ...body({ prompt: 'Hello', max_new_tokens: 400, temperature: 0 }),
    signal: ac2.signal,
  })
    .catch(() => undefined)
    .finally(() => (settled = true));
  const t1 = Date.now();
  while (h.svc.inFlight === 0 && !settled && Date.now() - t1 < 10_000) await new Promise((r) => setTimeout(r, 5));
  t.equal(h.svc.inFlight, 1, 'the server holds the request');
  ac2.abort();
  await p;
  await settle(2);
  t.equal(await count(), 2, 'the non-streaming generation was cancelled');
  t.equal(h.svc.inFlight, 0, 'and freed');
  t.equal(h.svc.engine.inFlight, 0);
});

t.test('API keys, rate limit, queue depth, body size', async (t) => {
  const h = await harness(model, (c) => ({
    ...c,
    apiKeys: ['k1', 'k2'],
    rateLimit: 4,
    limits: { ...c.limits, queueDepth: 1, bodyLimit: 2000 },
  }));
  t.teardown(() => h.close());
  const { app } = h;
  const auth = { authorization: 'Bearer k1' };
  t.equal((await app.inject('/v1/vectors')).statusCode, 401);
  const bad = await app.inject({ url: '/v1/vectors', headers: { authorization: 'Bearer nope' } });
  t.equal(bad.statusCode, 401);
  t.same(
    bad.json(),
    { error: { code: 'unauthorized', message: 'missing or unknown API key' } },
    '401 and nothing else',
  );
  t.equal(bad.headers['www-authenticate'], 'Bearer');
  t.equal((await app.inject({ url: '/v1/vectors', headers: auth })).statusCode, 200);
  for (const dodge of ['/%761/vectors', '/v%31/vectors', '/v1//vectors']) {
    t.not((await app.inject(dodge)).statusCode, 200, `${dodge} does not get around the key`);
  }
  for (const open of ['/healthz', '/readyz', '/metrics', '/openapi.json'])
    t.equal((await app.inject(open)).statusCode, 200, `${open} stays open`);

  // queue depth 1: a second request while one is in flight gets 429 with Retry-After
  const first = post(
    app,
    '/v1/generate',
    { prompt: 'x', max_new_tokens: 200, temperature: 0 },
    { authorization: 'Bearer k2' },
  );
  const t0 = Date.now();
  while (h.svc.inFlight === 0 && Date.now() - t0 < 10_000) await new Promise((r) => setImmediate(r));
  const full = await post(app, '/v1/generate', { prompt: 'x', max_new_tokens: 2 }, auth);
  t.equal(full.statusCode, 429, full.body);
  t.equal(full.headers['retry-after'], '1');
  t.match(full.json().error, {
    code: 'queue_full',
    message: /queue is full \(1 of 1 generations in flight; this request needs 1\)/,
  });
  t.equal((await first).statusCode, 200, (await first).body);

  const big = await post(app, '/v1/vectors', { name: 'big', values: Array(500).fill(0.123456) }, auth);
  t.equal(big.statusCode, 413);
  t.match(big.json().error, { code: 'too_large', message: /2000 bytes/ });

  // rate limit: 4 per minute per key (k1 used 3 so far), k2 counted apart
  const r5 = await app.inject({ url: '/v1/vectors', headers: auth });
  t.equal(r5.statusCode, 200);
  const r6 = await app.inject({ url: '/v1/vectors', headers: auth });
  t.equal(r6.statusCode, 429);
  t.ok(Number(r6.headers['retry-after']) > 0, 'Retry-After');
  t.equal(r6.json().error.code, 'rate_limited');
  t.equal(
    (await app.inject({ url: '/v1/vectors', headers: { authorization: 'Bearer k2' } })).statusCode,
    200,
    'per key',
  );
});

t.test('a generation past the request time limit is cancelled with 504', async (t) => {
  const h = await harness(model, (c) => ({ ...c, limits: { ...c.limits, requestTimeoutMs: 100 } }));
  t.teardown(() => h.close());
  const t0 = Date.now();
  const r = await post(h.app, '/v1/generate', { prompt: 'x', max_new_tokens: 500, temperature: 0 });
  t.equal(r.statusCode, 504);
  t.match(r.json().error, { code: 'timeout', message: /time limit \(100 ms\)/ });
  t.ok(Date.now() - t0 < 5000, 'answered soon after the limit');
  t.equal(h.svc.engine.inFlight, 0, 'the generation was cancelled');
  const oai = await post(h.app, '/v1/completions', { prompt: 'x', max_tokens: 500, temperature: 0 });
  t.equal(oai.statusCode, 504, 'completions too');
  t.equal(oai.json().error.code, 'timeout');
});

t.test('without API keys, the rate limit counts per address whatever bearer is sent', async (t) => {
  const h = await harness(model, (c) => ({ ...c, rateLimit: 2 }));
  t.teardown(() => h.close());
  const codes = [];
  for (let i = 0; i < 4; i++)
    codes.push(
      (await h.app.inject({ url: '/v1/vectors', headers: { authorization: `Bearer made-up-${i}` } })).statusCode,
    );
  t.same(codes, [200, 200, 429, 429]);
});

t.test('random and malformed bodies: only 4xx, no crash, stored vectors unchanged', async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  const { app } = h;
  await post(app, '/v1/vectors', { name: 'keep', values: Array.from({ length: 64 }, (_, i) => i / 64) });
  const before = (await app.inject('/v1/vectors/keep?values=true')).json();
  const routes: [string, string][] = [
    ['POST', '/v1/vectors'],
    ['PUT', '/v1/vectors/keep'],
    ['POST', '/v1/generate'],
    ['POST', '/v1/activations'],
    ['POST', '/v1/completions'],
    ['POST', '/v1/sweep'],
    ['POST', '/v1/replay'],
    ['DELETE', '/v1/vectors/..%2Fkeep'],
  ];
  const fields = fc.constantFrom(
    'name',
    'values',
    'recipe',
    'prompt',
    'layers',
    'layer',
    'max_new_tokens',
    'max_tokens',
    'interventions',
    'top_p',
    'temperature',
    'stream',
    'n',
    'seed',
    'vector',
    'coeff',
    'kind',
    'coeffs',
    'seeds',
    'unit',
    'telemetry',
    'compare',
    'receipt',
  );
  const value = fc.oneof(
    fc.jsonValue(),
    fc.constantFrom(-1, 0, 1e308, -1e308, 2 ** 53, 0.5, 'keep', '', 'x'.repeat(300), [], [[]], { values: [] }, null),
    fc.array(fc.double({ noNaN: true }), { maxLength: 70 }),
  );
  const body = fc.oneof(
    fc.dictionary(fields, value, { maxKeys: 6 }),
    fc.jsonValue(),
    fc.record({
      prompt: fc.string(),
      interventions: fc.array(fc.dictionary(fields, value, { maxKeys: 4 }), { maxLength: 3 }),
    }),
  );
  let statuses = new Map<number, number>();
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...routes), body, fc.boolean(), async ([method, url], b, raw) => {
      const payload = raw ? JSON.stringify(b).slice(0, Math.max(1, JSON.stringify(b).length - 1)) : JSON.stringify(b);
      const r = await app.inject({
        method: method as 'POST',
        url,
        payload,
        headers: { 'content-type': 'application/json' },
      });
      statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1);
      if (r.statusCode >= 500) return false;
      if (r.statusCode >= 400) return typeof r.json().error?.message === 'string';
      return true;
    }),
    { numRuns: 300, seed: 42 },
  );
  t.pass(`status counts: ${JSON.stringify(Object.fromEntries(statuses))}`);
  const after = (await app.inject('/v1/vectors/keep?values=true')).json();
  t.same(after, before, 'the stored vector is unchanged');
  t.equal(h.svc.engine.ready, true, 'the engine is still up');
  statuses = new Map();
});

t.test('vectors survive a restart on the same data directory', async (t) => {
  const data = mkdtempSync(join(root, 'data-'));
  const a = await harness(model, (c) => c, data);
  const made = (
    await post(a.app, '/v1/vectors', {
      name: 'persist',
      recipe: { kind: 'actadd', layer: 1, positive: 'Love', negative: 'Hate' },
    })
  ).json();
  t.match(made, { kind: 'sequence' });
  await a.close();
  const b = await harness(model, (c) => c, data);
  t.teardown(() => b.close());
  const again = (await b.app.inject('/v1/vectors/persist')).json();
  t.same(again, made, 'same metadata after the restart');
  const use = await post(b.app, '/v1/generate', {
    prompt: 'I love you so',
    max_new_tokens: 3,
    interventions: [{ vector: 'persist', layer: 1, coeff: 2 }],
  });
  t.equal(use.statusCode, 200, 'and usable: the model is the same');
  t.equal(use.json().interventions[0].positions, 'front');
});

t.test('SIGTERM: stop accepting, finish what is in flight, exit 0', async (t) => {
  const data = mkdtempSync(join(root, 'data-'));
  // in Redis mode: `serve --worker`, whose queue worker drains too
  const redis = queueMode ? await testRedis() : undefined;
  t.teardown(() => redis?.cleanup());
  const env = redis ? { REDIS_URL: redis.url, STEERD_REDIS_PREFIX: redis.prefix } : {};
  const args = ['serve', '--model', model, '--port', '0', '--data', data, ...(redis ? ['--worker'] : [])];
  const child = spawn(process.execPath, [join(import.meta.dirname, '..', 'bin', 'steerd.js'), ...args], {
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      log += d;
      const m = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) resolve(Number(m[1]));
    });
    child.stderr.on('data', (d: Buffer) => (log += d));
    child.on('exit', () => reject(new Error(`server exited: ${log}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  const inflight = fetch(`${url}/v1/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_new_tokens: 150, temperature: 0 }),
  });
  await new Promise((r) => setTimeout(r, 150));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 50));
  const refused = await fetch(`${url}/v1/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_new_tokens: 2 }),
  }).then(
    (r) => r.status,
    () => 'closed',
  );
  t.ok(refused === 503 || refused === 'closed', `a new request during the drain: ${refused}`);
  const done = await inflight;
  t.equal(done.status, 200, 'the request in flight finished');
  t.equal(((await done.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens, 150);
  t.equal(await exited, 0, 'exit code 0');
});
