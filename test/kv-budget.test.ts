/**
 * The KV budget through the server: requests beyond it wait in order and complete with the tokens
 * they get alone, never more admitted than fit, usage never above 1; a request that can never fit
 * is refused with 422 naming the limit; in Redis mode a worker takes no more jobs than it admits.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import t from 'tap';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { bullPrefix, queueName } from '../src/queue/jobs.ts';
import { createService } from '../src/server.ts';
import { harness, post } from './helpers/api.ts';
import { oneClass, sameRun } from './helpers/provider.ts';
import { spawnWorker, testRedis } from './helpers/redis.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-kv-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 2, embd: 64, heads: 4, ctx: 128, seed: 4, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const gauge = (metrics: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);
const prompts = Array.from({ length: 10 }, (_, i) => `Request number ${i} says`);
const body = (prompt: string) => ({ prompt, max_new_tokens: 40, temperature: 0 });

t.test('a budget of 256 tokens: four requests of class 64 at a time, the rest wait', async (t) => {
  const h = await harness(model, (c) => ({ ...c, kvCacheTokens: 256 }));
  t.teardown(() => h.close());
  const info = (await h.app.inject('/v1/model')).json();
  t.equal(info.limits.kv_cache_tokens, 256);
  t.match(info.kv_cache, {
    tokens: 256,
    bytes_per_token: 2 * 2 * 64 * 4,
    location: oneClass ? 'device' : 'host',
    classes: oneClass ? [128] : [64, 128],
  });

  let polling = true;
  let maxUsage = 0;
  let maxRunning = 0;
  const poll = (async () => {
    while (polling) {
      const m = (await h.app.inject('/metrics')).body;
      maxUsage = Math.max(maxUsage, gauge(m, 'steerd:kv_cache_usage_perc'));
      maxRunning = Math.max(maxRunning, gauge(m, 'steerd:num_requests_running'));
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const together = await Promise.all(prompts.map((p) => post(h.app, '/v1/generate', body(p))));
  polling = false;
  await poll;
  t.ok(
    together.every((r) => r.statusCode === 200),
    'every request completes',
  );
  t.equal(maxUsage, 1, 'the budget is used in full, never beyond');
  t.ok(maxRunning <= 4 && maxRunning >= 2, `at most 4 running at once (saw ${maxRunning})`);
  for (const [i, p] of prompts.entries()) {
    const alone = (await post(h.app, '/v1/generate', body(p))).json();
    sameRun(t, together[i].json().tokens, alone.tokens, `request ${i}: the tokens it gets alone`);
  }
  // the engine thread reports after its step: the last answer may come first
  let usage = Number.NaN;
  for (const t0 = Date.now(); usage !== 0 && Date.now() - t0 < 2000; await new Promise((r) => setTimeout(r, 10)))
    usage = gauge((await h.app.inject('/metrics')).body, 'steerd:kv_cache_usage_perc');
  t.equal(usage, 0, 'everything given back');
});

t.test('a request that can never fit is refused before it is queued', async (t) => {
  const h = await harness(model, (c) => ({ ...c, kvCacheTokens: 100 }));
  t.teardown(() => h.close());
  t.same(
    (await h.app.inject('/v1/model')).json().kv_cache.classes,
    oneClass ? [100] : [64, 100],
    'the largest class is the budget',
  );
  const r = await post(h.app, '/v1/generate', { prompt: 'Hello', max_new_tokens: 110 });
  t.equal(r.statusCode, 422);
  t.match(r.json().error, {
    code: 'unprocessable',
    message: /kv_cache_tokens: 100/,
    details: { kv_cache_tokens: 100 },
  });
  t.match(r.json().error.message, /needs 11\d tokens/, 'names what it needs');
  t.equal(
    (await post(h.app, '/v1/generate', { prompt: 'Hello', max_new_tokens: 90 })).statusCode,
    200,
    'one that fits runs',
  );
});

t.test('Redis mode: a worker takes no more jobs than its budget admits', async (t) => {
  const redis = await testRedis();
  if (redis.skip) return t.plan(0, redis.skip);
  t.teardown(() => redis.cleanup());
  // 128 tokens: two requests of class 64; the worker would take 8 jobs at once otherwise
  const worker = spawnWorker(redis.url, model, redis.prefix, { STEERD_KV_CACHE_TOKENS: '128' });
  t.teardown(() => worker.stop());
  await worker.ready;
  const config = { ...loadConfig({}), model, redisUrl: redis.url, redisPrefix: redis.prefix, logLevel: 'silent' };
  const svc = await createService(config);
  const app = await buildApp(svc, { logger: false });
  t.teardown(async () => {
    await app.close();
    await svc.engine.close();
    await svc.store.close?.();
  });
  const queue = new Queue(queueName(svc.engine.info.fingerprint), {
    connection: { url: redis.url } as never,
    prefix: bullPrefix(redis.prefix),
  });
  t.teardown(() => queue.close());
  // the start-up measurement (/v1/model's norms, a prompt pass that holds no cache) done first
  for (const t0 = Date.now(); svc.engine.inFlight > 0 && Date.now() - t0 < 20_000; )
    await new Promise((r) => setTimeout(r, 10));
  let polling = true;
  let maxActive = 0;
  let maxUsage = 0;
  const poll = (async () => {
    while (polling) {
      maxActive = Math.max(maxActive, await queue.getActiveCount());
      maxUsage = Math.max(maxUsage, gauge((await app.inject('/metrics')).body, 'steerd:kv_cache_usage_perc'));
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const results = await Promise.all(prompts.slice(0, 6).map((p) => post(app, '/v1/generate', body(p))));
  polling = false;
  await poll;
  t.ok(
    results.every((r) => r.statusCode === 200),
    'every request completes',
  );
  t.ok(maxActive <= 2, `at most 2 jobs active on the worker (saw ${maxActive})`);
  t.ok(maxUsage > 0 && maxUsage <= 1, `the API's /metrics sums the worker's report (${maxUsage})`);
});
