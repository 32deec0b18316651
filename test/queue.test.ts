import t from 'tap';
import type { Config } from '../src/config.ts';
import { type Progress, queueName, TokenSequence } from '../src/queue/jobs.ts';
import { INLINE_TTL_S } from '../src/queue/remote-engine.ts';
import { VectorCache } from '../src/queue/vector-cache.ts';
import { vectorHash } from '../src/store/content.ts';
import { valuesKey } from '../src/store/redis-vectors.ts';
import { VALUES_TTL_S } from '../src/store/types.ts';
import { harness, post } from './helpers/api.ts';
import { queueFixture, requests } from './helpers/queue.ts';

// The queue: answers as embedded, scale-out, vectors by hash, depth and rate limits across API
// processes (a worker's faults: failover.test.ts).
const { url, probe, prefix, skip, model, spawnWorker, jobStarts } = await queueFixture('queue');

const redisMode =
  (worker: boolean) =>
  (c: Config): Config => ({ ...c, redisUrl: url, redisPrefix: prefix, worker });

t.test('through the queue, with a worker in the API process: the same answers as embedded', { skip }, async (t) => {
  const embedded = await harness(model);
  const queued = await harness(model, redisMode(true));
  t.teardown(async () => {
    await embedded.close();
    await queued.close();
  });
  t.equal(queued.svc.engine.info.provider, 'queue');
  const pairs = await Promise.all(
    requests
      .slice(0, 8)
      .map((r) => Promise.all([post(embedded.app, '/v1/generate', r), post(queued.app, '/v1/generate', r)])),
  );
  for (const [i, [a, b]] of pairs.entries()) {
    t.equal(b.statusCode, 200, b.body);
    t.same(b.json().tokens, a.json().tokens, `"${requests[i].prompt}": same tokens`);
  }
  const acts = (app: typeof embedded.app) =>
    post(app, '/v1/activations', { prompt: 'The cat', layers: [1], reduce: 'last' }).then((r) => r.json());
  t.same((await acts(queued.app)).activations, (await acts(embedded.app)).activations, 'activations too');
  const bad = await post(queued.app, '/v1/generate', {
    prompt: 'x',
    interventions: [{ vector: { values: [1, 2] }, layer: 1, coeff: 1 }],
  });
  t.equal(bad.statusCode, 422, 'a bad request is refused before it is queued');
  t.equal(
    await probe.llen(`${prefix}q:${queueName(queued.svc.engine.info.fingerprint)}:wait`),
    0,
    'nothing waits in the queue',
  );
});

t.test('scale-out: one API process, two worker processes, 32 concurrent requests', { skip }, async (t) => {
  const spawned = [spawnWorker(prefix), spawnWorker(prefix)];
  const workers = spawned.map((w) => w.child);
  const started = spawned.map((w) => w.ready);
  const exits = workers.map((w) => new Promise<number | null>((r) => w.on('exit', (code) => r(code))));
  t.teardown(() => {
    for (const w of workers) if (w.exitCode === null) w.kill('SIGKILL');
  });
  await Promise.all(started);
  const embedded = await harness(model);
  const api = await harness(model, redisMode(false));
  t.teardown(async () => {
    await embedded.close();
    await api.close();
  });
  // embedded, all at once (a request's tokens do not depend on its batch: test/invariance.test.ts)
  const want = await Promise.all(
    requests.map(async (r) => (await post(embedded.app, '/v1/generate', r)).json().tokens),
  );
  const got = await Promise.all(requests.map((r) => post(api.app, '/v1/generate', r)));
  t.same(
    got.map((r) => r.statusCode),
    requests.map(() => 200),
    'every request completed',
  );
  t.same(
    got.map((r) => r.json().tokens),
    want,
    'each with the tokens it gets in embedded mode',
  );
  const starts = await jobStarts(prefix, api.svc.engine.info.fingerprint);
  t.ok(starts.length >= 32, `${starts.length} jobs kept (these 32 and the earlier tests')`);
  t.ok(
    starts.every((n) => n === 1),
    'each started exactly once',
  );
  for (const w of workers) w.kill('SIGTERM');
  t.same(await Promise.all(exits), [0, 0], 'workers drain and exit 0 on SIGTERM');
});

t.test('jobs carry vectors by hash; workers fetch them from the registry', { skip }, async (t) => {
  const p = `${prefix}hash:`;
  const api = await harness(model, (c) => ({ ...c, redisUrl: url, redisPrefix: p, worker: true }));
  t.teardown(() => api.close());
  const values = Array.from({ length: 64 }, (_, j) => Math.cos(j) * 0.3);
  const made = await post(api.app, '/v1/vectors', { name: 'v', values });
  t.equal(made.statusCode, 201, made.body);
  const hash = made.json().hash;
  const body = (vector: unknown) => ({
    prompt: 'By hash',
    max_new_tokens: 5,
    temperature: 0,
    interventions: [{ vector, layer: 2, coeff: 6 }],
  });
  const named = await post(api.app, '/v1/generate', body('v'));
  t.equal(named.statusCode, 200, named.body);
  const inline = (await post(api.app, '/v1/generate', body({ values }))).json();
  t.same(inline.tokens, named.json().tokens, 'inline values and the registered vector steer alike');
  const plain = (await post(api.app, '/v1/generate', { prompt: 'By hash', max_new_tokens: 5, temperature: 0 })).json();
  t.not(plain.text, inline.text, 'and they do steer');

  const q = `${p}q:${queueName(api.svc.engine.info.fingerprint)}`;
  const jobs = await probe.keys(`${q}:*-*-*`);
  t.ok(jobs.length >= 2, 'finished jobs are kept');
  for (const k of jobs) {
    const data = JSON.parse((await probe.hget(k, 'data'))!);
    if (data.req.interventions.length)
      t.same(
        Object.keys(data.req.interventions[0]).sort(),
        ['coeff', 'hash', 'layer', 'op', 'positions', 'rows', 'site'],
        'a job names its vector by hash, without values',
      );
  }
  t.equal(await probe.ttl(valuesKey(p, hash)), -1, 'registered values do not expire');
  const other = Array.from({ length: 64 }, (_, j) => Math.sin(j) * 0.3);
  await post(api.app, '/v1/generate', body({ values: other }));
  const keys = await probe.keys(valuesKey(p, '*'));
  t.equal(keys.length, 2, 'inline values are stored once, under their hash');
  const inlineKey = keys.find((k) => k !== valuesKey(p, hash))!;
  const ttl = await probe.ttl(inlineKey);
  // a job needs them INLINE_TTL_S; a response's receipt names them, which keeps them a week
  t.ok(ttl > INLINE_TTL_S && ttl <= VALUES_TTL_S, `inline values expire, in a week (${ttl} s)`);
  t.equal((await api.app.inject({ method: 'DELETE', url: '/v1/vectors/v' })).statusCode, 204);
  t.ok(
    (await probe.ttl(valuesKey(p, hash))) > 3600,
    "a deleted vector's values expire rather than vanish under a queued job",
  );
  await probe.del(valuesKey(p, hash), inlineKey);
  const lost = await post(api.app, '/v1/generate', body({ values: other }));
  t.equal(lost.statusCode, 200, 'values gone from Redis are put back by the next request');
});

t.test('the queue depth limit counts every API process', { skip }, async (t) => {
  const p = `${prefix}depth:`;
  const shared =
    (worker: boolean) =>
    (c: Config): Config => ({ ...c, redisUrl: url, redisPrefix: p, worker, limits: { ...c.limits, queueDepth: 5 } });
  const a = await harness(model, shared(false));
  const b = await harness(model, shared(false));
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const q = `${p}q:${queueName(a.svc.engine.info.fingerprint)}:wait`;
  const waiting = async (n: number) => {
    for (const t0 = Date.now(); (await probe.llen(q)) < n && Date.now() - t0 < 5000; )
      await new Promise((res) => setTimeout(res, 20));
    return probe.llen(q);
  };
  t.equal(await waiting(2), 2, "each API process's start-up measurement (/v1/model's norms) waits (no worker yet)");
  const r = (i: number) => ({ prompt: `Waiting ${i}`, max_new_tokens: 3, temperature: 0 });
  const admitted = [];
  for (const [i, h] of [a, a, b].entries()) {
    admitted.push(post(h.app, '/v1/generate', r(i)));
    t.equal(await waiting(3 + i), 3 + i);
  }
  const refused = await post(b.app, '/v1/generate', r(3));
  t.equal(refused.statusCode, 429, 'the fourth is refused by the other process');
  t.equal(refused.headers['retry-after'], '1');
  t.match(refused.json().error, { code: 'queue_full', details: { queue_depth: 5 } });
  const worker = await harness(model, shared(true));
  t.teardown(() => worker.close());
  t.same(
    (await Promise.all(admitted)).map((x) => x.statusCode),
    [200, 200, 200],
    'the admitted ones complete once a worker comes',
  );
});

t.test("a worker's vector cache: fetched once, checked against its hash, bounded", { skip }, async (t) => {
  const p = `${prefix}cache:`;
  const H = 4;
  const put = async (values: number[], rows = 1) => {
    const f = Float32Array.from(values);
    const hash = vectorHash(rows === 1 ? [H] : [rows, H], f);
    await probe.set(valuesKey(p, hash), Buffer.from(f.buffer));
    return { hash, rows, layer: 1, coeff: 1 };
  };
  const cache = new VectorCache(probe, p, H, 40); // room for two directions (16 bytes each), not three
  const a = await put([1, 2, 3, 4]);
  const [got] = await cache.resolve([a]);
  t.same(Array.from(got.values), [1, 2, 3, 4]);
  await probe.del(valuesKey(p, a.hash));
  t.same(Array.from((await cache.resolve([a]))[0].values), [1, 2, 3, 4], 'a second use needs no Redis');
  const b = await put([5, 6, 7, 8]);
  const c = await put([9, 10, 11, 12]);
  await cache.resolve([b, c]);
  t.equal(cache.size, 2, 'the least recently used left beyond the bound');
  await t.rejects(
    cache.resolve([a]),
    /vector_gone.*no longer in the registry/,
    'values gone from Redis and from the cache: 410',
  );
  const twice = new VectorCache(probe, p, H, 40);
  const d = await put([3, 1, 4, 1]);
  await Promise.all([twice.resolve([d]), twice.resolve([d, d])]);
  await twice.resolve([await put([2, 7, 1, 8])]);
  t.equal(twice.size, 2, 'a vector fetched by several jobs at once is counted once');
  const seq = await put([1, 1, 1, 1, 2, 2, 2, 2], 2);
  t.same((await cache.resolve([seq]))[0].rows, 2, 'a sequence: its shape is part of its hash');
  await probe.set(valuesKey(p, (await put([0, 0, 0, 1])).hash), Buffer.from(Float32Array.from([0, 0, 0, 2]).buffer));
  await t.rejects(
    cache.resolve([{ hash: vectorHash([H], Float32Array.from([0, 0, 0, 1])), rows: 1, layer: 1, coeff: 1 }]),
    /do not match their hash/,
    'values that do not match their hash are refused',
  );
});

t.test('the rate limit counts every API process', { skip }, async (t) => {
  const p = `${prefix}rate:`;
  const shared = (c: Config): Config => ({
    ...c,
    redisUrl: url,
    redisPrefix: p,
    worker: false,
    apiKeys: ['k1', 'k2'],
    rateLimit: 3,
  });
  const a = await harness(model, shared);
  const b = await harness(model, shared);
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const list = (h: typeof a, key: string) =>
    h.app.inject({ url: '/v1/vectors', headers: { authorization: `Bearer ${key}` } }).then((r) => r.statusCode);
  t.same(
    [await list(a, 'k1'), await list(b, 'k1'), await list(a, 'k1')],
    [200, 200, 200],
    'three requests of k1, over two processes',
  );
  t.equal(await list(b, 'k1'), 429, 'the fourth is refused, by either');
  t.equal(await list(a, 'k2'), 200, 'k2 counts apart');
  const counters = await probe.keys(`${p}ratelimit:*`);
  t.ok(counters.length > 0, 'the counts live in Redis, under the prefix');
  t.notOk(
    counters.some((k) => k.includes('k1') || k.includes('k2')),
    `named by the keys' hashes, not the keys (${counters[0]})`,
  );
});

t.test("a job's token events: repeats of a retry skipped, a divergent retry or a gap refused", async (t) => {
  const ev = (i: number, id: number): Progress => ({ i, e: { type: 'token', id, text: `<${id}>`, logprob: -1 } });
  const seq = new TokenSequence();
  const streamed = [ev(0, 5), ev(1, 6), ev(0, 5), ev(1, 6), ev(2, 7), ev(3, -1)]
    .map((p) => seq.accept(p))
    .filter((e) => e !== undefined);
  t.same(
    streamed.map((e) => (e.type === 'token' ? e.id : null)),
    [5, 6, 7, -1],
    'a retried job restarting from token 0 streams nothing twice',
  );
  t.equal(seq.generated, 3, 'the text-only event is not a generated token');
  t.throws(() => seq.accept(ev(1, 9)), { status: 502, code: 'worker_diverged' }, 'a retry that samples another token');
  t.throws(() => seq.accept(ev(6, 1)), { status: 502, code: 'events_lost' }, 'a gap');
});
