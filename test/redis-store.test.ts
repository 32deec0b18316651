import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Config } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/tiny.ts';
import { RedisVectorStore } from '../src/store/redis-vectors.ts';
import { describe, type StoredVector } from '../src/store/vectors.ts';
import { harness, post } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';

const { url, prefix, skip, cleanup } = await testRedis();
t.teardown(cleanup);

const vector = (name: string, seed: number, H = 8): StoredVector => {
  const values = Float32Array.from({ length: H }, (_, i) => Math.sin(i + seed));
  return {
    name,
    ...describe(values, [H]),
    layer: 1,
    recipe: 'uploaded',
    model: { id: 'm@1', n_embd: H },
    description: null,
    created_at: new Date(0).toISOString(),
    values,
  };
};

t.test('two processes share one registry', { skip }, async (t) => {
  const a = new RedisVectorStore(url, prefix);
  const b = new RedisVectorStore(url, prefix);
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const v = vector('dir', 1);
  await a.put(v, { replace: false, max: 3 });
  const got = await b.get('dir');
  t.same(Array.from(got.values), Array.from(v.values), 'float32 values round-trip');
  t.equal(got.hash, v.hash);
  await t.rejects(b.put(vector('dir', 2), { replace: false, max: 3 }), { status: 409, message: /exists/ });
  await b.put(vector('dir', 2), { replace: true, max: 3 });
  t.equal((await a.get('dir')).hash, vector('dir', 2).hash, 'replaced for everyone');
  await a.put(vector('b', 3), { replace: false, max: 3 });
  await a.put(vector('c', 4), { replace: false, max: 3 });
  await t.rejects(a.put(vector('d', 5), { replace: false, max: 3 }), { status: 422, message: /maximum of 3/ });
  // concurrent writers of one new name: exactly one wins
  const race = await Promise.allSettled([
    a.put(vector('x', 6), { replace: false, max: 10 }),
    b.put(vector('x', 7), { replace: false, max: 10 }),
  ]);
  t.same(race.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  t.same(
    (await b.list()).map((m) => m.name),
    ['b', 'c', 'dir', 'x'],
  );
  await b.delete('b');
  await t.rejects(a.get('b'), { status: 404, message: /no vector named/ });
  await t.rejects(a.delete('b'), { status: 404, message: /no vector named/ });
  t.ok(await a.ping());
});

t.test('a vector registered through one API process is usable through another', { skip }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'steerd-redis-'));
  const model = join(root, 'model');
  writeTinyCheckpoint(model, { layers: 2, embd: 32, heads: 2, ctx: 64, seed: 3, initScale: 10 });
  const redis = (c: Config): Config => ({ ...c, redisUrl: url, redisPrefix: `${prefix}api:`, worker: true });
  const one = await harness(model, redis);
  const two = await harness(model, redis);
  t.teardown(async () => {
    await one.close();
    await two.close();
    rmSync(root, { recursive: true, force: true });
  });
  const made = await post(one.app, '/v1/vectors', {
    name: 'shared',
    recipe: { kind: 'diff', layer: 1, positive: 'Love', negative: 'Hate' },
  });
  t.equal(made.statusCode, 201, made.body);
  const seen = await two.app.inject('/v1/vectors/shared');
  t.same(seen.json(), made.json(), 'the other process sees it');
  const gen = (app: typeof one.app) =>
    post(app, '/v1/generate', {
      prompt: 'Hi',
      max_new_tokens: 4,
      temperature: 0,
      interventions: [{ vector: 'shared', layer: 1, coeff: 8 }],
    }).then((r) => r.json());
  const [x, y] = [await gen(one.app), await gen(two.app)];
  t.same(y.tokens, x.tokens, 'and uses it the same way');
  t.equal(y.interventions[0].hash, made.json().hash);
  t.same((await two.app.inject('/readyz')).json(), { status: 'ready' });
});

t.test('an unreachable Redis: 503 at once for the registry and the queue, readiness says so', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'steerd-redis-'));
  const model = join(root, 'model');
  writeTinyCheckpoint(model, { layers: 1, embd: 32, heads: 2, ctx: 32 });
  const h = await harness(model, (c) => ({ ...c, redisUrl: 'redis://127.0.0.1:9', redisPrefix: prefix }));
  t.teardown(async () => {
    await h.close();
    rmSync(root, { recursive: true, force: true });
  });
  const t0 = Date.now();
  const r = await h.app.inject('/v1/vectors');
  t.equal(r.statusCode, 503);
  t.match(r.json().error.message, /vector registry \(Redis\) is unavailable/);
  t.ok(Date.now() - t0 < 2000, 'without hanging');
  const ready = await h.app.inject('/readyz');
  t.equal(ready.statusCode, 503);
  t.match(ready.json().error.message, /Redis/);
  const t1 = Date.now();
  const gen = await post(h.app, '/v1/generate', { prompt: 'x', max_new_tokens: 2 });
  t.equal(gen.statusCode, 503, 'generation needs the queue');
  t.match(gen.json().error.message, /queue \(Redis\) is unavailable/);
  t.ok(Date.now() - t1 < 3000, 'and says so without hanging');
});
