import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { openapiYaml } from '../src/spec.ts';
import { harness, post, queueMode } from './helpers/api.ts';
import { provider } from './helpers/provider.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-api-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 8, embd: 64, heads: 4, ctx: 128, seed: 21, initScale: 10 });
const h = await harness(model);
const { app, svc } = h;
t.teardown(async () => {
  await h.close();
  rmSync(root, { recursive: true, force: true });
});
const H = 64;
const vec = (scale = 0.1, seed = 1) => Array.from({ length: H }, (_, i) => scale * Math.sin(i * 1.7 + seed));

t.test('the committed openapi.yaml is what the routes serve', async (t) => {
  const generated = await openapiYaml();
  t.equal(
    readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8'),
    generated,
    'run `npm run openapi` after changing a route',
  );
  const served = await app.inject('/openapi.yaml');
  t.equal(served.statusCode, 200);
  t.equal(served.body, generated);
  const json = (await app.inject('/openapi.json')).json();
  t.ok(json.paths['/v1/generate'].post, 'also as JSON');
  t.equal((await app.inject('/docs/')).statusCode, 200, 'Swagger UI');
});

t.test('vectors: create, read, list, replace, delete', async (t) => {
  const created = await post(app, '/v1/vectors', { name: 'up', values: vec(), layer: 3, description: 'test' });
  t.equal(created.statusCode, 201, created.body);
  const m = created.json();
  t.match(m, {
    name: 'up',
    kind: 'direction',
    shape: [H],
    layer: 3,
    recipe: 'uploaded',
    model: { id: svc.model.id, n_embd: H },
    description: 'test',
  });
  t.ok(Math.abs(m.norm - Math.hypot(...vec())) < 1e-5, 'norm');
  t.match(m.hash, /^[0-9a-f]{64}$/);
  t.notOk('values' in m);

  t.equal((await post(app, '/v1/vectors', { name: 'up', values: vec() })).statusCode, 409, 'name taken');
  const got = (await app.inject('/v1/vectors/up?values=true')).json();
  t.same(
    got.values.map((v: number) => +v.toFixed(5)),
    vec().map((v) => +Math.fround(v).toFixed(5)),
    'values round-trip as float32',
  );
  const seq = await post(app, '/v1/vectors', {
    name: 'seq',
    values: [vec(0.1, 1), vec(0.1, 2), vec(0.1, 3)],
    normalize: true,
  });
  t.equal(seq.statusCode, 201);
  t.match(seq.json(), { kind: 'sequence', shape: [3, H] });
  const rows = (await app.inject('/v1/vectors/seq?values=true')).json().values;
  t.ok(
    rows.every((r: number[]) => Math.abs(Math.hypot(...r) - 1) < 1e-5),
    'each row normalized',
  );

  const put = await app.inject({ method: 'PUT', url: '/v1/vectors/up', payload: { values: vec(0.2) } });
  t.equal(put.statusCode, 200);
  t.not(put.json().hash, m.hash, 'replaced');
  const list = (await app.inject('/v1/vectors')).json().data.map((v: { name: string }) => v.name);
  t.same(list, ['seq', 'up']);
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/vectors/seq' })).statusCode, 204);
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/vectors/seq' })).statusCode, 404);
  t.equal((await app.inject('/v1/vectors/seq')).json().error.code, 'not_found');
});

t.test('vectors: bad input is refused with the right status and changes nothing', async (t) => {
  const before = (await app.inject('/v1/vectors')).json();
  const cases: [unknown, number, RegExp][] = [
    [{ name: '../etc', values: vec() }, 400, /name/],
    [{ name: 'x', values: vec().slice(1) }, 422, /width 63 does not match this model's hidden size 64/],
    [{ name: 'x', values: [vec(), vec().slice(2)] }, 400, /same length/],
    [{ name: 'x' }, 400, /^body must have "values" or "recipe"$/],
    [
      { name: 'x', values: vec(), recipe: { kind: 'diff', layer: 1, positive: 'a', negative: 'b' } },
      400,
      /^body takes one of "values" or "recipe", not several$/,
    ],
    [{ name: 'x', values: ['a'] }, 400, /number/],
    [{ name: 'x', values: vec(), extra: 1 }, 400, /unknown property "extra"/],
    [{ name: 'x', values: vec(), layer: 9 }, 422, /layer 9 is out of range/],
    [{ name: 'x', recipe: { kind: 'diff', layer: 9, positive: 'a', negative: 'b' } }, 422, /layer 9 is out of range/],
    [{ name: 'x', recipe: { kind: 'diff', layer: 1, positive: 'a' } }, 400, /positive and negative/],
    [{ name: 'x', recipe: { kind: 'svd', layer: 1 } }, 400, /body\/recipe\/kind must be one of "diff", "actadd"/],
    [{ name: 'x', recipe: { kind: 'pca', layer: 1 } }, 400, /recipe pca needs pairs/],
  ];
  for (const [body, status, msg] of cases) {
    const r = await post(app, '/v1/vectors', body);
    t.equal(r.statusCode, status, `${JSON.stringify(body).slice(0, 60)} → ${status}`);
    t.match(r.json().error?.message, msg);
  }
  const notJson = await app.inject({
    method: 'POST',
    url: '/v1/vectors',
    payload: '{"name": ',
    headers: { 'content-type': 'application/json' },
  });
  t.equal(notJson.statusCode, 400);
  t.equal(notJson.json().error.code, 'invalid_request');
  t.same((await app.inject('/v1/vectors')).json(), before, 'the store is unchanged');
});

t.test("the seed's experiment: Love − Hate at layer 6, coeff ±10, greedy", async (t) => {
  const v = await post(app, '/v1/vectors', {
    name: 'love-hate',
    recipe: { kind: 'diff', layer: 6, positive: 'Love', negative: 'Hate', normalize: true },
  });
  t.equal(v.statusCode, 201, v.body);
  t.match(v.json(), { layer: 6, recipe: { kind: 'diff', positive: 'Love', negative: 'Hate', normalize: true } });
  t.ok(Math.abs(v.json().norm - 1) < 1e-5, 'normalized');
  const gen = (interventions: unknown[]) =>
    post(app, '/v1/generate', { prompt: 'I think dogs are', max_new_tokens: 12, temperature: 0, interventions }).then(
      (r) => r.json(),
    );
  const plain = await gen([]);
  const up = await gen([{ vector: 'love-hate', layer: 6, coeff: 10 }]);
  const down = await gen([{ vector: 'love-hate', layer: 6, coeff: -10 }]);
  t.equal(
    new Set([plain.text, up.text, down.text]).size,
    3,
    `three different completions: ${JSON.stringify([plain.text, up.text, down.text])}`,
  );
  t.match(up.interventions, [
    { vector: 'love-hate', hash: v.json().hash, layer: 6, coeff: 10, positions: 'all', shape: [H] },
  ]);
  // the same vector given inline, through the engine directly
  const values = (await app.inject('/v1/vectors/love-hate?values=true')).json().values;
  const inline = await gen([{ vector: { values }, layer: 6, coeff: 10 }]);
  t.same(
    inline.tokens.map((x: { id: number }) => x.id),
    up.tokens.map((x: { id: number }) => x.id),
    'inline values give the same tokens',
  );
  const direct: number[] = [];
  for await (const e of svc.engine.generate({
    prompt: svc.engine.tokenizer.encode('I think dogs are'),
    max_new_tokens: 12,
    temperature: 0,
    interventions: [{ values: Float32Array.from(values), rows: 1, layer: 6, coeff: 10 }],
  })) {
    if (e.type === 'token' && e.id >= 0) direct.push(e.id);
  }
  t.same(
    direct,
    up.tokens.map((x: { id: number }) => x.id),
    'the engine alone gives the same tokens',
  );
});

t.test('generate: response, compare, stop, prepend_bos, errors', async (t) => {
  const r = await post(app, '/v1/generate', {
    prompt: 'Hello',
    max_new_tokens: 6,
    temperature: 0.8,
    seed: 5,
    compare: true,
    interventions: [{ vector: 'up', layer: 2, coeff: 8 }],
  });
  t.equal(r.statusCode, 200, r.body);
  const b = r.json();
  t.match(b, {
    id: /^gen-/,
    model: 'model',
    finish_reason: 'length',
    usage: { prompt_tokens: 1, completion_tokens: 6 },
    seed: 5,
  });
  t.equal(b.tokens.length, 6);
  t.equal(b.text, b.tokens.map((x: { text: string }) => x.text).join(''));
  const unsteered = (
    await post(app, '/v1/generate', { prompt: 'Hello', max_new_tokens: 6, temperature: 0.8, seed: 5 })
  ).json();
  t.same(b.baseline.tokens, unsteered.tokens, 'baseline = the unsteered completion with the same seed');
  t.not(b.text, b.baseline.text);
  const bos = (await post(app, '/v1/generate', { prompt: 'Hello', max_new_tokens: 1, prepend_bos: true })).json();
  t.equal(bos.usage.prompt_tokens, 2, 'BOS prepended');
  const stop = (
    await post(app, '/v1/generate', {
      prompt: 'Hello',
      max_new_tokens: 6,
      temperature: 0.8,
      seed: 5,
      stop: unsteered.tokens[2].text,
    })
  ).json();
  t.equal(stop.finish_reason, 'stop');
  t.equal(
    stop.text,
    unsteered.tokens
      .slice(0, 2)
      .map((x: { text: string }) => x.text)
      .join(''),
  );

  const errors: [unknown, number, RegExp][] = [
    [{ prompt: '' }, 400, /fewer than 1 characters/],
    [{ prompt: 'x', top_p: 0 }, 400, /top_p must be > 0/],
    [{ prompt: 'x', temperature: -1 }, 400, /temperature must be >= 0/],
    [{ prompt: 'x', max_new_tokens: '5' }, 400, /must be integer/],
    [{ prompt: 'x', bogus: true }, 400, /unknown property "bogus"/],
    [{ prompt: 'x', max_new_tokens: 600 }, 422, /max_new_tokens \(600\) exceeds this server's limit \(512\)/],
    [
      { prompt: 'x '.repeat(100), max_new_tokens: 100 },
      422,
      /prompt \(\d+ tokens\) \+ max_new_tokens \(100\) exceeds the context \(128\)/,
    ],
    [{ prompt: 'x', interventions: [{ vector: 'nope', layer: 1, coeff: 1 }] }, 404, /no vector named "nope"/],
    [{ prompt: 'x', interventions: [{ vector: 'up', layer: 9, coeff: 1 }] }, 422, /layer 9 is out of range/],
    [
      { prompt: 'x', interventions: [{ vector: { values: [1, 2] }, layer: 1, coeff: 1 }] },
      422,
      /width 2 does not match/,
    ],
    [
      { prompt: 'x', interventions: Array(17).fill({ vector: 'up', layer: 1, coeff: 1 }) },
      422,
      /17 interventions exceed this server's limit \(16\)/,
    ],
    [
      { prompt: 'x', interventions: [{ vector: { values: vec().map(() => 1e39) }, layer: 1, coeff: 1 }] },
      400,
      /finite/,
    ],
  ];
  for (const [body, status, msg] of errors) {
    const res = await post(app, '/v1/generate', body);
    t.equal(res.statusCode, status, JSON.stringify(body).slice(0, 80));
    t.match(res.json().error.message, msg);
  }
  t.equal(svc.inFlight, 0, 'nothing left in flight');
});

t.test('a vector made for another model is refused when used', async (t) => {
  const other = join(root, 'other');
  writeTinyCheckpoint(other, { layers: 8, embd: 64, heads: 4, ctx: 128, seed: 99 });
  const h2 = await harness(other, (c) => c, svc.config.dataDir);
  t.teardown(() => h2.close());
  const r = await post(h2.app, '/v1/generate', { prompt: 'x', interventions: [{ vector: 'up', layer: 1, coeff: 1 }] });
  t.equal(r.statusCode, 422);
  t.match(r.json().error.message, /was made for model model@\w+ .*this server runs other@/);
});

t.test('activations: per position, reduced, base64', async (t) => {
  const r = await post(app, '/v1/activations', { prompt: 'The cat sat', layers: [0, 8] });
  t.equal(r.statusCode, 200, r.body);
  const b = r.json();
  t.same(
    b.tokens.map((x: { id: number }) => x.id),
    svc.engine.tokenizer.encode('The cat sat'),
  );
  t.same(b.shape, [3, H]);
  t.equal(b.activations['8'].length, 3);
  const last = (await post(app, '/v1/activations', { prompt: 'The cat sat', layers: [8], reduce: 'last' })).json();
  t.same(last.shape, [H]);
  t.same(last.activations['8'], b.activations['8'][2]);
  const b64 = (
    await post(app, '/v1/activations', { prompt: 'The cat sat', layers: [8], reduce: 'last', encoding: 'base64' })
  ).json();
  const buf = Buffer.from(b64.activations['8'], 'base64');
  t.same(Array.from(new Float32Array(buf.buffer, buf.byteOffset, H)), last.activations['8']);
  const steered = (
    await post(app, '/v1/activations', {
      prompt: 'The cat sat',
      layers: [3],
      reduce: 'last',
      interventions: [{ vector: 'up', layer: 3, coeff: 2 }],
    })
  ).json();
  const plain = (await post(app, '/v1/activations', { prompt: 'The cat sat', layers: [3], reduce: 'last' })).json();
  const up = (await app.inject('/v1/vectors/up?values=true')).json().values;
  t.ok(
    steered.activations['3'].every(
      (x: number, i: number) => Math.abs(x - plain.activations['3'][i] - 2 * up[i]) < 1e-5,
    ),
    'hook 3 after steering = before + 2 × vector',
  );
  t.equal((await post(app, '/v1/activations', { prompt: 'x', layers: [9] })).statusCode, 422);
  t.equal((await post(app, '/v1/activations', { prompt: 'x', layers: [] })).statusCode, 400);
});

t.test('OpenAI-compatible completions and models', async (t) => {
  const models = (await app.inject('/v1/models')).json();
  t.match(models, { object: 'list', data: [{ id: 'model', object: 'model' }] });
  const r = await post(app, '/v1/completions', {
    model: 'model',
    prompt: 'Hello',
    max_tokens: 5,
    temperature: 0,
    user: 'ignored',
    logit_bias: null,
  });
  t.equal(r.statusCode, 200, r.body);
  const b = r.json();
  t.match(b, {
    id: /^cmpl-/,
    object: 'text_completion',
    model: 'model',
    choices: [{ index: 0, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: 1, completion_tokens: 5, total_tokens: 6 },
  });
  const same = (await post(app, '/v1/generate', { prompt: 'Hello', max_new_tokens: 5, temperature: 0 })).json();
  t.equal(b.choices[0].text, same.text, 'same text as /v1/generate');
  const steered = (
    await post(app, '/v1/completions', {
      prompt: ['Hello'],
      max_tokens: 5,
      temperature: 0,
      interventions: [{ vector: 'up', layer: 2, coeff: 30 }],
    })
  ).json();
  t.not(steered.choices[0].text, b.choices[0].text, 'interventions apply');
  t.equal((await post(app, '/v1/completions', { prompt: 'x', n: 9 })).statusCode, 422, 'n beyond STEERD_MAX_N');
});

t.test('model, health, readiness, metrics', async (t) => {
  const m = (await app.inject('/v1/model')).json();
  t.match(m, {
    name: 'model',
    architecture: 'gpt2',
    random_weights: true,
    n_layer: 8,
    n_embd: H,
    provider: queueMode ? 'queue' : provider,
    dtype: 'float32',
    limits: { max_new_tokens: 512, max_context: 128 },
  });
  t.equal(m.resid_norms.layers.length, 9, 'one entry per hook point');
  t.ok(m.resid_norms.layers.every((l: { mean: number; max: number }) => l.mean > 0 && l.max >= l.mean));
  t.same((await app.inject('/healthz')).json(), { status: 'ok' });
  t.same((await app.inject('/readyz')).json(), { status: 'ready' });
  const metrics = (await app.inject('/metrics')).body;
  for (const name of [
    'steerd:num_requests_running',
    'steerd:num_requests_waiting',
    'steerd:prompt_tokens_total',
    'steerd:generation_tokens_total',
    'steerd:time_to_first_token_seconds_bucket',
    'steerd:inter_token_latency_seconds_bucket',
    'steerd:e2e_request_latency_seconds_bucket',
    'steerd:request_queue_time_seconds_bucket',
    'steerd:batch_size_bucket',
  ]) {
    t.match(metrics, name);
  }
  const generated = Number(/steerd:generation_tokens_total (\d+)/.exec(metrics)![1]);
  await post(app, '/v1/generate', { prompt: 'x', max_new_tokens: 3, temperature: 0 });
  const after = Number(/steerd:generation_tokens_total (\d+)/.exec((await app.inject('/metrics')).body)![1]);
  t.equal(after - generated, 3, 'generated tokens are counted');
  t.equal((await app.inject('/v1/nothing')).json().error.code, 'not_found');
});
