import t from 'tap';
import type { Config } from '../src/config.ts';
import { queueName } from '../src/queue/jobs.ts';
import { harness, post } from './helpers/api.ts';
import { queueFixture, requests } from './helpers/queue.ts';

// The queue when a worker fails: its jobs taken over, or every wait bounded when nobody can.
const { url, probe, prefix, skip, model, spawnWorker, jobStarts } = await queueFixture('failover');

t.test('a worker killed mid-generation: its jobs are taken over and every request completes', { skip }, async (t) => {
  const quick = { STEERD_QUEUE_LOCK_MS: '1000', STEERD_QUEUE_STALLED_MS: '500' };
  const a = spawnWorker(`${prefix}kill:`, quick);
  let b: ReturnType<typeof spawnWorker> | undefined;
  await a.ready;
  const embedded = await harness(model);
  const api = await harness(model, (c) => ({ ...c, redisUrl: url, redisPrefix: `${prefix}kill:`, worker: false }));
  t.teardown(async () => {
    for (const w of [a, b]) if (w?.child.exitCode === null) w.child.kill('SIGKILL');
    await embedded.close();
    await api.close();
  });
  const long = requests.slice(0, 6).map((r) => ({ ...r, max_new_tokens: 120 }));
  const want = await Promise.all(long.map(async (r) => (await post(embedded.app, '/v1/generate', r)).json().tokens));
  const pending = Promise.all(long.map((r) => post(api.app, '/v1/generate', r)));
  // kill worker A once it is generating, then start B, which takes the stalled jobs over
  const t0 = Date.now();
  const generated = async () =>
    Number(/steerd:generation_tokens_total (\d+)/.exec(await api.svc.metrics.registry.metrics())?.[1] ?? 0);
  while ((await generated()) < 10 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 20));
  t.ok((await generated()) >= 10, 'worker A was generating');
  a.child.kill('SIGKILL');
  b = spawnWorker(`${prefix}kill:`, quick);
  await b.ready;
  const got = await pending;
  t.same(
    got.map((r) => r.statusCode),
    long.map(() => 200),
    'every request completed',
  );
  t.same(
    got.map((r) => r.json().tokens),
    want,
    'with the tokens of an uninterrupted run, none repeated',
  );
  t.ok(
    (await jobStarts(`${prefix}kill:`, api.svc.engine.info.fingerprint)).some((n) => n > 1),
    'worker B restarted jobs that A had started',
  );
});

t.test('every wait is bounded: no worker, or a worker gone with nobody to take over', { skip }, async (t) => {
  const p = `${prefix}bounds:`;
  const limit = 1500;
  const grace = 1000;
  const limits = (c: Config): Config => ({
    ...c,
    redisUrl: url,
    redisPrefix: p,
    worker: false,
    queueCancelGraceMs: grace,
    limits: { ...c.limits, requestTimeoutMs: limit },
  });
  const api = await harness(model, limits);
  t.teardown(() => api.close());
  const timed = async <T>(f: () => Promise<T>) => {
    const t0 = Date.now();
    return { r: await f(), ms: Date.now() - t0 };
  };
  // no worker at all
  const m = await timed(() => api.app.inject('/v1/model'));
  t.equal(m.r.statusCode, 200);
  t.equal(m.r.json().resid_norms, null, `/v1/model answers without the norms (${m.ms} ms)`);
  const acts = await timed(() => post(api.app, '/v1/activations', { prompt: 'x', layers: [1] }));
  t.equal(acts.r.statusCode, 504, 'activations: 504 at the time limit');
  t.ok(acts.ms < limit + 2000, `(${acts.ms} ms)`);
  const gen = await timed(() => post(api.app, '/v1/generate', { prompt: 'x', max_new_tokens: 5 }));
  t.equal(gen.r.statusCode, 504, 'a generation: 504 at the time limit');
  t.ok(gen.ms < limit + 2000, `(${gen.ms} ms)`);
  const q = `${p}q:${queueName(api.svc.engine.info.fingerprint)}`;
  t.equal(await probe.llen(`${q}:wait`), 0, 'their jobs were removed at the limit (the start-up measurement too)');

  // a worker that dies mid-generation, none to take over: the request ends at its limit + the grace
  const w = spawnWorker(p, { STEERD_QUEUE_LOCK_MS: '60000' });
  t.teardown(() => w.stop());
  await w.ready;
  const pending = timed(() => post(api.app, '/v1/generate', { prompt: 'x', max_new_tokens: 250, temperature: 0 }));
  const tokens = async () =>
    Number(/steerd:generation_tokens_total (\d+)/.exec(await api.svc.metrics.registry.metrics())?.[1] ?? 0);
  const before = await tokens();
  for (const t0 = Date.now(); (await tokens()) === before && Date.now() - t0 < 10_000; )
    await new Promise((r) => setTimeout(r, 10));
  w.child.kill('SIGKILL');
  const died = await pending;
  t.equal(died.r.statusCode, 504, `its worker gone: 504 ${died.r.body}`);
  t.ok(died.ms < limit + grace + 2000, `after the time limit and the grace period (${died.ms} ms)`);
  t.equal(api.svc.engine.inFlight, 0, 'nothing left waiting');
});

t.test('a generation past its time limit is cancelled on its worker', { skip }, async (t) => {
  const p = `${prefix}cancel:`;
  const api = await harness(model, (c) => ({
    ...c,
    redisUrl: url,
    redisPrefix: p,
    worker: true,
    limits: { ...c.limits, requestTimeoutMs: 100 },
  }));
  t.teardown(() => api.close());
  const r = await post(api.app, '/v1/generate', { prompt: 'x', max_new_tokens: 250, temperature: 0 });
  t.equal(r.statusCode, 504, r.body.slice(0, 200));
  const q = `${p}q:${queueName(api.svc.engine.info.fingerprint)}`;
  let done: { finish_reason: string; usage: { completion_tokens: number } } | undefined;
  for (const t0 = Date.now(); !done && Date.now() - t0 < 5000; await new Promise((res) => setTimeout(res, 20))) {
    for (const k of await probe.keys(`${q}:*-*-*`)) {
      const [name, value] = await probe.hmget(k, 'name', 'returnvalue');
      if (name === 'generate' && value) done = JSON.parse(value);
    }
  }
  t.equal(done?.finish_reason, 'cancelled', 'the worker retired the row');
  t.ok(done && done.usage.completion_tokens < 250, `after ${done?.usage.completion_tokens} of 250 tokens`);
});
