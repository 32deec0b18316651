import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Config } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { vectorHash } from '../src/store/content.ts';
import { ORPHAN_TTL_S, RedisVectorStore, shapeKey, valuesKey } from '../src/store/redis-vectors.ts';
import { type StoredVector, VALUES_TTL_S } from '../src/store/types.ts';
import { harness, post } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';
import { awkward, bytes, roundTrip, storedVector } from './helpers/vectors.ts';

const { url, probe, prefix, skip, cleanup } = await testRedis();
t.teardown(cleanup);

const vector = (name: string, seed: number, H = 8, shape = [H]): StoredVector =>
  storedVector(name, shape, H, (i) => Math.sin(i + seed));

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

t.test('values by content hash: registered, put, released', { skip }, async (t) => {
  const p = `${prefix}values:`;
  const store = new RedisVectorStore(url, p);
  t.teardown(() => store.close());
  const ttl = (k: string) => probe.ttl(k);
  // at least VALUES_TTL_S from the call (TTL rounds to whole seconds, and a second may pass)
  const week = (s: number) => s >= VALUES_TTL_S - 2 && s <= VALUES_TTL_S;

  // registered vectors: found by hash, their keys never expire, putValues does not make them
  const dir = vector('dir', 1);
  const seq = vector('seq', 2, 8, [3, 8]);
  await store.put(dir, { replace: false, max: 10 });
  await store.put(seq, { replace: false, max: 10 });
  for (const v of [dir, seq]) {
    const got = await store.getValues(v.hash);
    t.same(got?.shape, v.shape, `${v.name}: found by hash, shape exact`);
    t.ok(got && bytes(got.values).equals(bytes(v.values)), 'values bit for bit');
    await store.putValues(v.hash, v.shape, v.values);
    t.equal(await ttl(valuesKey(p, v.hash)), -1, "a registered vector's values key has no expiry, after putValues too");
    t.equal(await ttl(shapeKey(p, v.hash)), -1, 'nor its shape key');
  }

  // inline values: put, got bit for bit, kept a week
  for (const shape of [[8], [1, 8], [4, 8]]) {
    const hash = await roundTrip(t, store, shape);
    t.ok(week(await ttl(valuesKey(p, hash))), 'the values key expires in VALUES_TTL_S');
    const both = await probe.multi().pttl(valuesKey(p, hash)).pttl(shapeKey(p, hash)).exec();
    t.ok(Math.abs((both![0][1] as number) - (both![1][1] as number)) <= 5, 'the shape key expiring with it');
  }
  t.equal(await store.getValues(vectorHash([8], awkward(8, 99))), null, 'an unknown hash: null');

  // a job's inline values (15 minutes) are extended to a week; a longer expiry is not shortened
  const inline = awkward(8, 5);
  const ih = vectorHash([8], inline);
  await probe.set(valuesKey(p, ih), bytes(inline), 'EX', 900);
  t.same((await store.getValues(ih))?.shape, [8], 'values stored without a shape key are found (shape from the hash)');
  await store.putValues(ih, [8], inline);
  t.ok(week(await ttl(valuesKey(p, ih))), 'putValues extends a 15-minute expiry to a week');
  await probe.expire(valuesKey(p, ih), 2 * VALUES_TTL_S);
  await store.putValues(ih, [8], inline);
  t.ok((await ttl(valuesKey(p, ih))) > VALUES_TTL_S, 'and does not shorten a longer one');
  t.ok((await ttl(shapeKey(p, ih))) > VALUES_TTL_S, 'the shape key following');

  // deleted and replaced vectors: still found, kept at least VALUES_TTL_S
  t.ok(ORPHAN_TTL_S >= VALUES_TTL_S, 'released values are kept at least as long as receipts last');
  await store.put(vector('dir', 3), { replace: true, max: 10 });
  await store.delete('seq');
  for (const v of [dir, seq]) {
    const got = await store.getValues(v.hash);
    t.same(got?.shape, v.shape, `${v.name}, released: found by hash`);
    t.ok(got && bytes(got.values).equals(bytes(v.values)));
    t.ok(week(await ttl(valuesKey(p, v.hash))), 'expiring in a week');
    t.ok(week(await ttl(shapeKey(p, v.hash))), 'shape key too');
  }

  // shapes recovered from the hash alone: vectors registered before shape keys existed
  const legacy = vector('legacy', 4, 8, [2, 8]);
  await store.put(legacy, { replace: false, max: 10 });
  await probe.del(shapeKey(p, legacy.hash));
  t.same((await store.getValues(legacy.hash))?.shape, [2, 8], 'a [k, H] shape found without its key');
  await probe.set(shapeKey(p, legacy.hash), '[16]');
  t.same((await store.getValues(legacy.hash))?.shape, [2, 8], 'a wrong shape key is not believed');

  // values not matching their hash are not served
  const bad = awkward(8, 6);
  const bh = vectorHash([8], bad);
  await probe.set(valuesKey(p, bh), bytes(awkward(8, 7)), 'EX', 60);
  t.equal(await store.getValues(bh), null, 'values under the wrong hash: null');
  await store.putValues(bh, [8], bad);
  t.ok(bytes((await store.getValues(bh))!.values).equals(bytes(bad)), 'putValues repairs them');

  // refused: malformed hashes, values of another hash; nothing is written
  const before = (await probe.keys(`${p}*`)).sort();
  for (const h of ['*', `${p}x`, bh.toUpperCase(), bh.slice(1), `${bh}0`]) {
    t.equal(await store.getValues(h), null, `getValues(${JSON.stringify(h.slice(0, 20))}…) is null`);
    await t.rejects(store.putValues(h, [8], bad), /not a vector hash/, 'putValues refuses it');
  }
  await t.rejects(store.putValues(bh, [8], inline), /do not have the hash/);
  await t.rejects(store.putValues(bh, [2, 4], bad), /do not have the hash/);
  t.same((await probe.keys(`${p}*`)).sort(), before, 'no key written');
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
