import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import t, { type Test } from 'tap';
import type { Config } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { vectorHash } from '../src/store/content.ts';
import { FileVectorStore } from '../src/store/file-vectors.ts';
import type { StoredPreset } from '../src/store/presets.ts';
import { RedisVectorStore } from '../src/store/redis-vectors.ts';
import type { VectorStore } from '../src/store/types.ts';
import { harness, post, queueMode } from './helpers/api.ts';
import { testRedis } from './helpers/redis.ts';

// Presets outlive the process that made them: in the file store (a restart on the same data
// directory) and in Redis (another API process on the same prefix).
const root = mkdtempSync(join(tmpdir(), 'steerd-presets-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 2, embd: 32, heads: 2, ctx: 64, seed: 5, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const gen = (app: Awaited<ReturnType<typeof harness>>['app'], modelName?: string) =>
  post(app, '/v1/generate', { model: modelName, prompt: 'Hello there', max_new_tokens: 4, temperature: 0 }).then((r) =>
    r.json(),
  );

/** Makes a vector and a preset steering with it; returns the preset as made and its tokens. */
async function make(t: Test, app: Awaited<ReturnType<typeof harness>>['app']) {
  const values = Array.from({ length: 32 }, (_, i) => Math.sin(i));
  t.equal((await post(app, '/v1/vectors', { name: 'v', values })).statusCode, 201);
  const made = await post(app, '/v1/presets', {
    name: 'steady',
    description: 'kept',
    interventions: [{ vector: 'v', layer: 1, coeff: 6 }],
  });
  t.equal(made.statusCode, 201, made.body);
  const steered = await gen(app, 'steady');
  t.notSame(steered.tokens, (await gen(app)).tokens, 'it steers');
  return { made: made.json(), steered };
}

const redis = await testRedis();
t.teardown(redis.cleanup);

// (STEERD_TEST_QUEUE=redis: the harness keeps its registry in Redis, not in the data directory)
const fileStore = { skip: queueMode && 'the harness keeps its registry in Redis' };

t.test('presets survive a restart (file store)', fileStore, async (t) => {
  const dir = mkdtempSync(join(root, 'data-'));
  const one = await harness(model, undefined, dir);
  const model_id = one.svc.model.id;
  const { made: shown } = await make(t, one.app).finally(() => one.close());
  const made = { ...shown, model_id };
  // the store opened again on the same directory, as a restarted server does
  const store = new FileVectorStore(dir);
  const back = await store.getPreset(made.model_id, 'steady');
  t.match(back, { name: made.name, description: 'kept', created_at: made.created_at });
  t.same(back.interventions, made.interventions, 'its interventions');
  t.same(
    (await store.listPresets(made.model_id)).map((p) => p.name),
    ['steady'],
  );
  t.same(
    Array.from(back.values[0]),
    Array.from(Float32Array.from({ length: 32 }, (_, i) => Math.sin(i))),
    'and its values',
  );
});

t.test('presets survive an API restart (Redis)', { skip: redis.skip }, async (t) => {
  const open = () =>
    harness(model, (c: Config): Config => ({ ...c, redisUrl: redis.url, redisPrefix: redis.prefix, worker: true }));
  const one = await open();
  const { made, steered } = await make(t, one.app).finally(() => one.close());
  const two = await open();
  t.teardown(() => two.close());
  t.same((await two.app.inject('/v1/presets/steady')).json(), made, 'the preset, as it was made');
  const ids = ((await two.app.inject('/v1/models')).json() as { data: { id: string }[] }).data.map((m) => m.id);
  t.ok(ids.includes('steady'), 'listed as a model');
  t.same((await gen(two.app, 'steady')).tokens, steered.tokens, 'and steers the same');
});

/** A preset of one intervention with these values, as the stores keep it. */
function stored(name: string, values: Float32Array): StoredPreset {
  return {
    name,
    description: null,
    model: { id: 'm', n_embd: values.length },
    created_at: new Date(0).toISOString(),
    interventions: [
      {
        vector: null,
        hash: vectorHash([values.length], values),
        shape: [values.length],
        layer: 0,
        site: 'resid_pre',
        op: 'add',
        coeff: 1,
        unit: 'absolute',
        positions: 'all',
      },
    ],
    values: [values],
  };
}

async function storeRules(t: Test, store: VectorStore) {
  const a = stored('a', Float32Array.from([1, 2, 3]));
  await store.putPreset(a, { replace: false, max: 2 });
  t.same(await store.getPreset('m', 'a'), a, 'read back with its values');
  await t.rejects(store.putPreset(a, { replace: false, max: 2 }), { status: 409, code: 'conflict' }, 'a taken name');
  const a2 = stored('a', Float32Array.from([4, 5, 6]));
  await store.putPreset(a2, { replace: true, max: 2 });
  t.same((await store.getPreset('m', 'a')).values, a2.values, 'replaced');
  await store.putPreset(stored('b', Float32Array.from([0, 1, 0])), { replace: false, max: 2 });
  await t.rejects(store.putPreset(stored('c', Float32Array.from([1])), { replace: false, max: 2 }), {
    status: 422,
    code: 'limit',
  });
  t.same(
    (await store.listPresets('m')).map((p) => p.name),
    ['a', 'b'],
  );
  // another model's presets are apart: the same name is free there, its limit its own
  const other = { ...stored('a', Float32Array.from([7, 8, 9])), model: { id: 'n', n_embd: 3 } };
  await store.putPreset(other, { replace: false, max: 2 });
  t.same(await store.getPreset('n', 'a'), other, "the other model's a");
  t.same((await store.getPreset('m', 'a')).values, a2.values, "this model's a as it was");
  await t.rejects(store.getPreset('n', 'b'), { status: 404, code: 'not_found' }, "not the other model's");
  await t.rejects(store.deletePreset('n', 'b'), { status: 404, code: 'not_found' });
  t.same(
    (await store.listPresets('n')).map((p) => p.name),
    ['a'],
  );
  await store.deletePreset('m', 'a');
  await t.rejects(store.getPreset('m', 'a'), { status: 404, code: 'not_found' });
  await t.rejects(store.deletePreset('m', 'a'), { status: 404, code: 'not_found' });
  t.same(await store.getPreset('n', 'a'), other, "the other model's a is left");
}

t.test('the stores keep presets: a taken name, the limit, replace and delete', async (t) => {
  const dir = mkdtempSync(join(root, 'store-'));
  await storeRules(t, new FileVectorStore(dir));
  if (redis.skip) return;
  const store = new RedisVectorStore(redis.url, `${redis.prefix}rules:`);
  t.teardown(() => store.close());
  await storeRules(t, store);
});

t.test(
  'a model name no preset can have is model_not_found; the file store reaches no other file',
  fileStore,
  async (t) => {
    const dir = mkdtempSync(join(root, 'names-'));
    const h = await harness(model, undefined, dir);
    t.teardown(() => h.close());
    // a registered vector is a JSON file beside the presets folder; a preset file of the same shape elsewhere
    t.equal((await post(h.app, '/v1/vectors', { name: 'x', values: new Array(32).fill(1) })).statusCode, 201);
    writeFileSync(join(root, 'y.json'), readFileSync(join(dir, 'vectors', 'x.json')));
    const outside = `../../${basename(root)}/y`;
    for (const name of ['../vectors/x', '../../etc/y', outside, 'a/b', 'a\\b', '..', '.x', '']) {
      for (const path of ['/v1/completions', '/v1/generate', '/v1/sweep']) {
        const body =
          path === '/v1/completions'
            ? { model: name, prompt: 'Hi', max_tokens: 1 }
            : path === '/v1/generate'
              ? { model: name, prompt: 'Hi', max_new_tokens: 1 }
              : { model: name, prompt: 'Hi', max_new_tokens: 1, vector: 'x', layers: [0], coeffs: [1] };
        const r = await post(h.app, path, body);
        t.equal(r.statusCode, 404, `${path} ${JSON.stringify(name)}: ${r.body}`);
        t.equal(r.json().error.code, 'model_not_found');
      }
    }
    // the store itself: such a name is no preset, and none is written under it
    const store = new FileVectorStore(dir);
    for (const name of ['../vectors/x', outside, 'a/b', '..', ''])
      await t.rejects(
        store.getPreset(h.svc.model.id, name),
        { status: 404, code: 'not_found' },
        `get ${JSON.stringify(name)}`,
      );
    await t.rejects(store.deletePreset(h.svc.model.id, '../vectors/x'), { status: 404, code: 'not_found' }, 'delete');
    t.ok(existsSync(join(dir, 'vectors', 'x.json')), 'the vector is still there');
    await t.rejects(
      store.putPreset(stored('../escaped', Float32Array.from([1])), { replace: true, max: 10 }),
      { status: 400, code: 'invalid_request' },
      'put',
    );
    t.notOk(existsSync(join(dir, 'escaped.json')), 'nothing written outside the presets folder');
  },
);

t.test('two models on one registry: each sees, replaces and deletes only its own presets', async (t) => {
  const dir = mkdtempSync(join(root, 'shared-'));
  const other = join(root, 'other');
  writeTinyCheckpoint(other, { layers: 2, embd: 32, heads: 2, ctx: 64, seed: 6, initScale: 10 });
  const a = await harness(model, undefined, dir);
  t.teardown(() => a.close());
  const b = await harness(other, undefined, dir);
  t.teardown(() => b.close());
  t.not(a.svc.model.id, b.svc.model.id, 'two models');
  const { made } = await make(t, a.app);
  const get = (h: typeof a, name = 'steady') => h.app.inject(`/v1/presets/${name}`);
  const body = (coeff: number) => ({
    interventions: [{ vector: { values: Array.from({ length: 32 }, (_, i) => Math.cos(i)) }, layer: 0, coeff }],
  });
  const unchanged = async (what: string) => t.same((await get(a)).json(), made, `${what}: A's preset as made`);

  t.equal((await get(b)).statusCode, 404, "B: A's preset is not there");
  const del = await b.app.inject({ method: 'DELETE', url: '/v1/presets/steady' });
  t.equal(del.statusCode, 404, 'B: deleting it is a 404');
  await unchanged('after B deleted');
  const put = await b.app.inject({ method: 'PUT', url: '/v1/presets/steady', payload: body(2) });
  t.equal(put.statusCode, 200, put.body);
  t.equal(put.json().interventions[0].coeff, 2, "B's own");
  await unchanged("after B's PUT");
  t.equal((await post(b.app, '/v1/presets', { name: 'steady', ...body(3) })).statusCode, 409, "B's own name is taken");
  t.equal((await b.app.inject({ method: 'DELETE', url: '/v1/presets/steady' })).statusCode, 204);
  await unchanged('after B deleted its own');
  const again = await post(b.app, '/v1/presets', { name: 'steady', ...body(3) });
  t.equal(again.statusCode, 201, 'B: the name is free for B, whatever A has');
  const listed = async (h: typeof a) =>
    ((await h.app.inject('/v1/presets')).json() as { data: { interventions: { coeff: number }[] }[] }).data.map(
      (p) => p.interventions[0].coeff,
    );
  t.same(await listed(a), [6], 'A lists its own (coeff 6)');
  t.same(await listed(b), [3], 'B lists its own (coeff 3)');
});

t.test("the GPT-2 hub names are no preset's, whatever the base model", async (t) => {
  const h = await harness(model);
  t.teardown(() => h.close());
  const interventions = [{ vector: { values: new Array(32).fill(0.5) }, layer: 0, coeff: 1 }];
  for (const name of ['gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl']) {
    const r = await post(h.app, '/v1/presets', { name, interventions });
    t.equal(r.statusCode, 409, `${name}: ${r.body}`);
    t.match(r.json().error.message, /names a checkpoint on the hub/);
  }
  const put = await h.app.inject({ method: 'PUT', url: '/v1/presets/gpt2-xl', payload: { interventions } });
  t.equal(put.statusCode, 409, 'PUT too');
  t.equal(
    (await post(h.app, '/v1/presets', { name: 'gpt2-mine', interventions })).statusCode,
    201,
    'a name of its own',
  );
});
