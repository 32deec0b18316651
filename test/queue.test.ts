import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/tiny.ts';
import { harness, post } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';

const { url, probe, prefix, skip, cleanup } = await testRedis();
const root = mkdtempSync(join(tmpdir(), 'steerd-queue-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 3, embd: 64, heads: 4, ctx: 256, seed: 8, initScale: 10 });
t.teardown(async () => {
  await cleanup();
  rmSync(root, { recursive: true, force: true });
});

/** A `steerd worker` process on the test Redis; `ready` resolves once it serves. */
function spawnWorker(redisPrefix: string, env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [join(import.meta.dirname, '..', 'bin', 'steerd.js'), 'worker', '--model', model], {
    env: { ...process.env, REDIS_URL: url, STEERD_REDIS_PREFIX: redisPrefix, STEERD_BATCH_CAPACITY: '8', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const ready = new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      if (out.includes('steerd worker: serving')) resolve();
    });
    child.stderr!.on('data', (d: Buffer) => (out += d));
    child.on('exit', (code) => reject(new Error(`worker exited (${code}): ${out}`)));
  });
  ready.catch(() => undefined);
  return { child, ready };
}

const redisMode = (worker: boolean) => (c: Config): Config => ({ ...c, redisUrl: url, redisPrefix: prefix, worker });
const requests = Array.from({ length: 32 }, (_, i) => ({
  prompt: `Request number ${i} says`,
  max_new_tokens: 4 + (i % 7),
  temperature: i % 2 ? 0 : 0.9,
  top_p: i % 3 ? 1 : 0.8,
  seed: 100 + i,
  interventions: i % 4 === 1 ? [{ vector: { values: Array.from({ length: 64 }, (_, j) => Math.sin(i + j) * 0.2) }, layer: 1 + (i % 3), coeff: 4 }] : [],
}));

t.test('through the queue, with a worker in the API process: the same answers as embedded', { skip }, async (t) => {
  const embedded = await harness(model);
  const queued = await harness(model, redisMode(true));
  t.teardown(async () => {
    await embedded.close();
    await queued.close();
  });
  t.equal(queued.svc.engine.info.provider, 'queue');
  for (const r of requests.slice(0, 8)) {
    const a = (await post(embedded.app, '/v1/generate', r)).json();
    const b = await post(queued.app, '/v1/generate', r);
    t.equal(b.statusCode, 200, b.body);
    t.same(b.json().tokens, a.tokens, `"${r.prompt}": same tokens`);
  }
  const acts = (app: typeof embedded.app) => post(app, '/v1/activations', { prompt: 'The cat', layers: [1], reduce: 'last' }).then((r) => r.json());
  t.same((await acts(queued.app)).activations, (await acts(embedded.app)).activations, 'activations too');
  const bad = await post(queued.app, '/v1/generate', { prompt: 'x', interventions: [{ vector: { values: [1, 2] }, layer: 1, coeff: 1 }] });
  t.equal(bad.statusCode, 422, 'a bad request is refused before it is queued');
  const waiting = await probe.keys(`${prefix}q:steerd:wait`);
  t.ok(waiting.length === 0 || (await probe.llen(waiting[0])) === 0, 'nothing waits in the queue');
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
  const want = [];
  for (const r of requests) want.push((await post(embedded.app, '/v1/generate', r)).json().tokens);
  const got = await Promise.all(requests.map((r) => post(api.app, '/v1/generate', r)));
  t.same(got.map((r) => r.statusCode), requests.map(() => 200), 'every request completed');
  t.same(got.map((r) => r.json().tokens), want, 'each with the tokens it gets in embedded mode');
  const ids = new Set(got.map((r) => r.json().id));
  t.equal(ids.size, 32, 'each exactly once');
  for (const w of workers) w.kill('SIGTERM');
  t.same(await Promise.all(exits), [0, 0], 'workers drain and exit 0 on SIGTERM');
});

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
  const want = [];
  for (const r of long) want.push((await post(embedded.app, '/v1/generate', r)).json().tokens);
  const pending = Promise.all(long.map((r) => post(api.app, '/v1/generate', r)));
  // kill worker A once it is generating, then start B, which takes the stalled jobs over
  const t0 = Date.now();
  while (Number(/steerd:generation_tokens_total (\d+)/.exec(await api.svc.metrics.registry.metrics())?.[1] ?? 0) < 10 && Date.now() - t0 < 20_000) {
    await new Promise((r) => setTimeout(r, 20));
  }
  a.child.kill('SIGKILL');
  b = spawnWorker(`${prefix}kill:`, quick);
  await b.ready;
  const got = await pending;
  t.same(got.map((r) => r.statusCode), long.map(() => 200), 'every request completed');
  t.same(got.map((r) => r.json().tokens), want, 'with the tokens of an uninterrupted run, none repeated');
});
