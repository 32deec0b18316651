/**
 * The research instruments through the API: coefficients in residual-norm units, per-token
 * telemetry, control arms, `/v1/sweep` and receipts with `/v1/replay`. (The telemetry's numbers
 * are checked against the float64 reference in test/telemetry.test.ts.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness, post } from './helpers/api.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-instruments-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 4, embd: 64, heads: 4, ctx: 128, seed: 31, initScale: 10 });
const h = await harness(model, (c) => ({ ...c, limits: { ...c.limits, maxSweepCells: 12 } }));
const { app } = h;
t.teardown(async () => {
  await h.close();
  rmSync(root, { recursive: true, force: true });
});
const H = 64;
const vec = (scale = 0.1, seed = 1) => Array.from({ length: H }, (_, i) => scale * Math.sin(i * 1.7 + seed));
const norm = (v: number[]) => Math.sqrt(v.reduce((a, x) => a + x * x, 0));
const ids = (r: { json(): { tokens: { id: number }[] } }) => r.json().tokens.map((x) => x.id);
const base = { prompt: 'The weather today is', max_new_tokens: 12, temperature: 0.9, seed: 17 };
await post(app, '/v1/vectors', { name: 'dir', values: vec(0.3), layer: 2 });

t.test('unit resid_norm: the added vector is coeff × the layer’s median residual norm', async (t) => {
  const info = (await app.inject('/v1/model')).json();
  const median = info.resid_norms.layers[2].median;
  const v = vec(0.3);
  const r = await post(app, '/v1/generate', {
    ...base,
    interventions: [{ vector: 'dir', layer: 2, coeff: 0.5, unit: 'resid_norm' }],
  });
  t.equal(r.statusCode, 200, r.body);
  const applied = r.json().interventions[0];
  t.equal(applied.unit, 'resid_norm');
  t.ok(Math.abs(applied.applied_norm - 0.5 * median) < 1e-9 * median, 'applied_norm = coeff × median');
  t.ok(Math.abs(applied.applied_coeff - (0.5 * median) / norm(v)) < 1e-6, 'applied_coeff = coeff × median / ‖v‖');
  const same = await post(app, '/v1/generate', {
    ...base,
    interventions: [{ vector: 'dir', layer: 2, coeff: applied.applied_coeff }],
  });
  t.same(ids(same), ids(r), 'the same tokens as the absolute coefficient it stands for');
  t.match(same.json().interventions[0], { unit: 'absolute', applied_coeff: applied.applied_coeff });
  // a sequence: scaled by its largest row
  const rows = [vec(0.1, 1), vec(0.4, 2)];
  const seq = await post(app, '/v1/generate', {
    ...base,
    prompt: 'One two three four',
    interventions: [{ vector: { values: rows }, layer: 1, coeff: 2, unit: 'resid_norm' }],
  });
  const sa = seq.json().interventions[0];
  const m1 = info.resid_norms.layers[1].median;
  t.ok(
    Math.abs(sa.applied_coeff - (2 * m1) / norm(rows[1])) < 1e-6,
    'a sequence: its largest row has norm coeff × median',
  );
  const zero = await post(app, '/v1/generate', {
    ...base,
    interventions: [{ vector: { values: new Array(H).fill(0) }, layer: 1, coeff: 1, unit: 'resid_norm' }],
  });
  t.equal(zero.statusCode, 422, 'a zero vector has no residual-norm scale');
  const bad = await post(app, '/v1/generate', {
    ...base,
    interventions: [{ vector: 'dir', layer: 1, coeff: 1, unit: 'x' }],
  });
  t.equal(bad.statusCode, 400);
});

t.test('telemetry through /v1/generate, streamed and not', async (t) => {
  const body = { ...base, telemetry: true, interventions: [{ vector: 'dir', layer: 2, coeff: 8 }] };
  const r = (await post(app, '/v1/generate', body)).json();
  t.equal(r.tokens.length, 12);
  for (const tok of r.tokens) {
    t.ok(Number.isFinite(tok.baseline_logprob) && tok.kl >= 0 && typeof tok.top1_flip === 'boolean');
    t.equal(tok.projections.length, 1);
  }
  const kl = r.tokens.map((x: { kl: number }) => x.kl);
  t.ok(Math.abs(r.telemetry.mean_kl - kl.reduce((a: number, b: number) => a + b, 0) / kl.length) < 1e-9, 'mean_kl');
  t.equal(r.telemetry.max_kl, Math.max(...kl), 'max_kl');
  const plain = (await post(app, '/v1/generate', { ...body, telemetry: false })).json();
  t.same(
    plain.tokens.map((x: { id: number }) => x.id),
    r.tokens.map((x: { id: number }) => x.id),
    'the same tokens without telemetry',
  );
  t.notOk('telemetry' in plain);
  const sse = await app.inject({ method: 'POST', url: '/v1/generate', payload: { ...body, stream: true } });
  const events = sse.body.split('\n\n').filter((b) => b.includes('event: token'));
  const { text: _, ...first } = JSON.parse(/data: (.*)/.exec(events[0])![1]);
  const { text: __, ...want } = r.tokens[0];
  t.same(first, want, 'a streamed token carries the same telemetry');
  t.match(JSON.parse(/data: (.*)/.exec(sse.body.split('event: done')[1])![1]).telemetry, r.telemetry);
});

t.test('control arms run beside the request, with its seed', async (t) => {
  const iv = { vector: 'dir', layer: 2, coeff: 6 };
  const r = await post(app, '/v1/generate', {
    ...base,
    interventions: [iv],
    compare: ['baseline', 'negated', 'random'],
  });
  t.equal(r.statusCode, 200, r.body);
  const b = r.json();
  const unsteered = await post(app, '/v1/generate', base);
  t.same(
    b.baseline.tokens.map((x: { id: number }) => x.id),
    ids(unsteered),
    'baseline: the unsteered completion',
  );
  const negated = await post(app, '/v1/generate', { ...base, interventions: [{ ...iv, coeff: -6 }] });
  t.same(
    b.controls.negated.tokens.map((x: { id: number }) => x.id),
    ids(negated),
    'negated: coeff × −1',
  );
  const rv = b.controls.random.vectors;
  t.equal(rv.length, 1);
  t.ok(Math.abs(rv[0].norm - norm(vec(0.3))) < 1e-5, 'random: the same norm');
  t.not(rv[0].hash, b.interventions[0].hash, 'random: another vector');
  const again = (await post(app, '/v1/generate', { ...base, interventions: [iv], compare: ['random'] })).json();
  t.equal(again.controls.random.vectors[0].hash, rv[0].hash, 'the same seed draws the same random vector');
  t.same(again.controls.random.tokens, b.controls.random.tokens);
  const other = (
    await post(app, '/v1/generate', { ...base, seed: 18, interventions: [iv], compare: ['random'] })
  ).json();
  t.not(other.controls.random.vectors[0].hash, rv[0].hash, 'another seed, another random vector');
  t.same(
    (await post(app, '/v1/generate', { ...base, interventions: [iv], compare: true })).json().baseline.tokens,
    b.baseline.tokens,
    'compare: true is the baseline arm',
  );
  t.equal((await post(app, '/v1/generate', { ...base, compare: ['control'] })).statusCode, 400);
});

t.test('sweep: every cell equals the single run; coeff 0 equals the baseline', async (t) => {
  const body = {
    prompt: base.prompt,
    vector: 'dir',
    layers: [1, 3],
    coeffs: [0, 4, -4],
    seeds: [5, 6],
    max_new_tokens: 8,
    temperature: 0.9,
  };
  const r = await post(app, '/v1/sweep', body);
  t.equal(r.statusCode, 200, r.body);
  const s = r.json();
  t.equal(s.cells.length, 12);
  t.same(
    s.cells.map((c: { layer: number; coeff: number; seed: number }) => [c.layer, c.coeff, c.seed]),
    [1, 3].flatMap((l) => [0, 4, -4].flatMap((c) => [5, 6].map((sd) => [l, c, sd]))),
    'cells in layer, coeff, seed order',
  );
  for (const c of s.cells.filter((_: unknown, i: number) => i % 3 === 1)) {
    const one = await post(app, '/v1/generate', {
      prompt: base.prompt,
      max_new_tokens: 8,
      temperature: 0.9,
      seed: c.seed,
      interventions: [{ vector: 'dir', layer: c.layer, coeff: c.coeff }],
    });
    t.same(
      c.tokens.map((x: { id: number }) => x.id),
      ids(one),
      `cell layer ${c.layer} coeff ${c.coeff} seed ${c.seed}`,
    );
  }
  const zero = s.cells.find((c: { coeff: number; seed: number }) => c.coeff === 0 && c.seed === 5);
  t.same(
    zero.tokens.map((x: { id: number }) => x.id),
    s.baseline.tokens.map((x: { id: number }) => x.id),
    'coeff 0 = baseline',
  );
  t.equal(zero.telemetry.mean_kl, 0, 'coeff 0: mean_kl 0');
  t.ok(
    s.cells.some((c: { telemetry: { mean_kl: number } }) => c.telemetry.mean_kl > 0),
    'telemetry by default',
  );
  const tooMany = await post(app, '/v1/sweep', { ...body, coeffs: [1, 2, 3, 4, 5, 6, 7] });
  t.equal(tooMany.statusCode, 422);
  t.match(tooMany.json().error.message, /28 cells, more than this server's limit of 12/);
  const sse = await app.inject({ method: 'POST', url: '/v1/sweep', payload: { ...body, coeffs: [2], stream: true } });
  const cells = sse.body.split('\n\n').filter((b) => b.startsWith('event: cell'));
  t.equal(cells.length, 4, 'one cell event per cell');
  t.ok(sse.body.includes('event: done'), 'then done');
  t.equal((await post(app, '/v1/sweep', { ...body, vector: 'nope' })).statusCode, 404);
  t.equal((await post(app, '/v1/sweep', { ...body, layers: [] })).statusCode, 400);
  t.equal((await post(app, '/v1/sweep', { ...body, layers: [99] })).statusCode, 422);
});

t.test('receipts replay: identical, divergent, another model, a vector gone, malformed', async (t) => {
  const inline = vec(0.2, 9);
  const gen = (
    await post(app, '/v1/generate', {
      ...base,
      interventions: [
        { vector: 'dir', layer: 2, coeff: 0.3, unit: 'resid_norm' },
        { vector: { values: inline }, layer: 1, coeff: 3 },
      ],
    })
  ).json();
  const rec = gen.receipt;
  t.match(rec, {
    model: { id: h.svc.model.id },
    runs: [{ seed: 17, output: gen.tokens.map((x: { id: number }) => x.id) }],
  });
  t.equal(rec.runs[0].interventions[0].applied_coeff, gen.interventions[0].applied_coeff, 'the coefficient as applied');
  const same = await post(app, '/v1/replay', { receipt: rec });
  t.equal(same.statusCode, 200, same.body);
  t.match(same.json(), { identical: true, first_divergence: null, tokens: rec.runs[0].output });
  const tampered = structuredClone(rec);
  tampered.runs[0].output[3] = (tampered.runs[0].output[3] + 1) % 50257;
  t.match((await post(app, '/v1/replay', { receipt: tampered })).json(), { identical: false, first_divergence: 3 });
  const other = structuredClone(rec);
  other.model.id = 'gpt2-xl@000000000000';
  const wrong = await post(app, '/v1/replay', { receipt: other });
  t.equal(wrong.statusCode, 422);
  t.match(wrong.json().error.message, /made with model gpt2-xl@000000000000/);
  const gone = structuredClone(rec);
  gone.runs[0].interventions[1].hash = 'f'.repeat(64);
  t.equal((await post(app, '/v1/replay', { receipt: gone })).statusCode, 410, 'values no longer kept');
  for (const bad of [{}, { receipt: {} }, { receipt: { ...rec, runs: [] } }, { receipt: { ...rec, steerd: 1 } }])
    t.equal((await post(app, '/v1/replay', bad)).statusCode, 400);
  // a deleted vector's receipt still replays (its values are kept a while)
  await post(app, '/v1/vectors', { name: 'temp', values: vec(0.5, 4) });
  const withTemp = (
    await post(app, '/v1/generate', { ...base, interventions: [{ vector: 'temp', layer: 3, coeff: 5 }] })
  ).json();
  await app.inject({ method: 'DELETE', url: '/v1/vectors/temp' });
  t.match((await post(app, '/v1/replay', { receipt: withTemp.receipt })).json(), { identical: true });
  // sweeps and completions carry receipts too
  const sweep = (
    await post(app, '/v1/sweep', { prompt: 'Hi', vector: 'dir', layers: [2], coeffs: [3, -3], max_new_tokens: 5 })
  ).json();
  t.equal(sweep.receipt.runs.length, 3, 'the baseline and each cell');
  const rs = (await post(app, '/v1/replay', { receipt: sweep.receipt })).json();
  t.equal(rs.identical, true);
  t.equal(rs.runs.length, 3);
  const cmpl = (
    await post(app, '/v1/completions', { model: h.svc.model.name, prompt: 'Hello', max_tokens: 6, seed: 3 })
  ).json();
  t.match((await post(app, '/v1/replay', { receipt: cmpl.receipt })).json(), { identical: true });
});

t.test('fuzzed sweeps and receipts get 4xx, never 5xx', async (t) => {
  const fc = (await import('fast-check')).default;
  const sweep = { prompt: 'Hi', vector: 'dir', layers: [1], coeffs: [2], max_new_tokens: 3, telemetry: false };
  const gen = (await post(app, '/v1/generate', { prompt: 'Hi', max_new_tokens: 3, seed: 1 })).json();
  const odd = fc.oneof(
    fc.jsonValue(),
    fc.constantFrom(-1, 0, 1e308, 2 ** 53, 0.5, '', 'x'.repeat(70), [], [[]], null, 'f'.repeat(64), [1e9]),
  );
  /** A copy of `v` with the value at one path replaced (paths chosen by `pick`). */
  const mutate = (v: unknown, pick: number[], value: unknown): unknown => {
    if (!pick.length || v === null || typeof v !== 'object') return value;
    const keys = Object.keys(v as object);
    if (!keys.length) return value;
    const k = keys[pick[0] % keys.length];
    const copy = (Array.isArray(v) ? [...v] : { ...v }) as Record<string, unknown>;
    copy[k] = mutate(copy[k], pick.slice(1), value);
    return copy;
  };
  const statuses = new Map<number, number>();
  await fc.assert(
    fc.asyncProperty(
      fc.boolean(),
      fc.array(fc.nat(), { minLength: 1, maxLength: 5 }),
      odd,
      async (isSweep, pick, value) => {
        const [url, payload] = isSweep
          ? ['/v1/sweep', mutate(sweep, pick, value)]
          : ['/v1/replay', { receipt: mutate(gen.receipt, pick, value) }];
        const r = await app.inject({ method: 'POST', url, payload: payload as object });
        statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1);
        if (r.statusCode >= 500) return false;
        return r.statusCode < 400 || typeof r.json().error?.message === 'string';
      },
    ),
    { numRuns: 150, seed: 7 },
  );
  t.pass(`status counts: ${JSON.stringify(Object.fromEntries(statuses))}`);
  t.equal(h.svc.engine.ready, true, 'the engine is still up');
});
