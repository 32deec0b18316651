/**
 * Operators and hook sites through the API, the pca recipe against an independent decomposition,
 * vector diagnostics against hand computation (and the logit lens against the float64 reference).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness, post } from './helpers/api.ts';
import { loadReference } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-vector-tools-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 3, embd: 64, heads: 4, ctx: 128, seed: 41, initScale: 10 });
const h = await harness(model);
const { app } = h;
t.teardown(async () => {
  await h.close();
  rmSync(root, { recursive: true, force: true });
});
const H = 64;
const ids = (r: { json(): { tokens: { id: number }[] } }) => r.json().tokens.map((x) => x.id);
const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, x, i) => s + x * b[i], 0);
const norm = (a: ArrayLike<number>) => Math.sqrt(dot(a, a));
const pairs: [string, string][] = [
  ['I love this', 'I hate this'],
  ['What a wonderful day', 'What an awful day'],
  ['She was kind', 'She was cruel'],
  ['Great news', 'Terrible news'],
];
const last = async (text: string, layer: number, site = 'resid_pre') =>
  (await post(app, '/v1/activations', { prompt: text, layers: [layer], site, reduce: 'last' })).json().activations[
    layer
  ] as number[];

t.test('pca: the first right singular vector of the differences, signed toward their mean', async (t) => {
  const d = await Promise.all(
    pairs.map(async ([p, n]) => {
      const [a, b] = await Promise.all([last(p, 2, 'ln2'), last(n, 2, 'ln2')]);
      return a.map((x, i) => x - b[i]);
    }),
  );
  const mean = Array.from({ length: H }, (_, i) => d.reduce((s, r) => s + r[i], 0) / d.length);
  /** Power iteration on DᵀD (H × H), independent of the server's Gram-matrix eigenvectors. */
  const powerIteration = (rows: number[][]) => {
    let v = Array.from({ length: H }, (_, i) => Math.cos(i + 1));
    for (let it = 0; it < 5000; it++) {
      const proj = rows.map((r) => dot(r, v));
      const w = Array.from({ length: H }, (_, i) => rows.reduce((s, r, k) => s + proj[k] * r[i], 0));
      const n = norm(w);
      v = w.map((x) => x / n);
    }
    return dot(v, mean) < 0 ? v.map((x) => -x) : v;
  };
  for (const center of [false, true]) {
    const r = await post(app, '/v1/vectors', {
      name: `pca-${center}`,
      recipe: { kind: 'pca', layer: 2, site: 'ln2', pairs, center },
    });
    t.equal(r.statusCode, 201, r.body);
    t.match(r.json(), { site: 'ln2', layer: 2 });
    const got = (await app.inject(`/v1/vectors/pca-${center}?values=true`)).json().values as number[];
    const rows = center ? d.map((x) => x.map((v, i) => v - mean[i])) : d;
    const want = powerIteration(rows);
    t.ok(Math.abs(norm(got) - 1) < 1e-5, 'unit norm');
    t.ok(dot(got, want) > 1 - 1e-4, `center ${center}: the same direction and sign (cos ${dot(got, want)})`);
    t.ok(dot(got, mean) > 0, 'the mean difference projects positively');
    // pair consistency by hand
    const cons = d.reduce((s, x) => s + dot(x, mean) / (norm(x) * norm(mean)), 0) / d.length;
    t.ok(Math.abs(r.json().pair_consistency - cons) < 1e-5, `pair_consistency ${r.json().pair_consistency} vs ${cons}`);
  }
  t.equal(
    (
      await post(app, '/v1/vectors', {
        name: 'bad',
        recipe: { kind: 'diff', layer: 1, positive: 'a', negative: 'b', center: true },
      })
    ).statusCode,
    400,
    'center is a pca option',
  );
});

t.test('a vector remembers its site; interventions use it unless they say otherwise', async (t) => {
  await post(app, '/v1/vectors', {
    name: 'love-ln1',
    recipe: { kind: 'diff', layer: 1, site: 'ln1', positive: 'Love', negative: 'Hate', normalize: true },
  });
  const body = { prompt: 'I think you are', max_new_tokens: 8, temperature: 0 };
  const implicit = await post(app, '/v1/generate', {
    ...body,
    interventions: [{ vector: 'love-ln1', layer: 1, coeff: 10 }],
  });
  t.equal(implicit.statusCode, 200, implicit.body);
  t.match(implicit.json().interventions[0], { site: 'ln1', op: 'add' });
  const values = (await app.inject('/v1/vectors/love-ln1?values=true')).json().values;
  const explicit = await post(app, '/v1/generate', {
    ...body,
    interventions: [{ vector: { values }, layer: 1, site: 'ln1', coeff: 10 }],
  });
  t.same(ids(explicit), ids(implicit), 'the same tokens as the site given explicitly');
  const atResid = await post(app, '/v1/generate', {
    ...body,
    interventions: [{ vector: 'love-ln1', layer: 1, site: 'resid_pre', coeff: 10 }],
  });
  t.match(atResid.json().interventions[0], { site: 'resid_pre' });
  t.notSame(ids(atResid), ids(implicit), 'another site steers otherwise');
});

t.test('operators through the API', async (t) => {
  const v = Array.from({ length: H }, (_, i) => Math.sin(i * 0.3));
  const body = { prompt: 'Once upon a time', max_new_tokens: 6, temperature: 0 };
  const ablate = await post(app, '/v1/generate', {
    ...body,
    interventions: [{ vector: { values: v }, layer: 1, op: 'ablate' }],
  });
  t.equal(ablate.statusCode, 200, 'ablate needs no coeff');
  t.match(ablate.json().interventions[0], { op: 'ablate', coeff: 0 });
  const clamp = await post(app, '/v1/generate', {
    ...body,
    interventions: [{ vector: { values: v }, layer: 1, site: 'resid_mid', op: 'clamp', coeff: 2, unit: 'resid_norm' }],
  });
  t.equal(clamp.statusCode, 200, clamp.body);
  const model = (await app.inject('/v1/model')).json();
  const median = model.site_norms.resid_mid[1].median;
  t.ok(
    Math.abs(clamp.json().interventions[0].applied_coeff - 2 * median) < 1e-9,
    'clamp in resid_norm: the target is coeff × the site’s median',
  );
  const refused: [object, number, RegExp][] = [
    [{ vector: { values: v }, layer: 1, op: 'add' }, 400, /coeff is needed for add/],
    [{ vector: { values: [v, v] }, layer: 1, op: 'clamp', coeff: 1 }, 422, /takes a direction/],
    [{ vector: { values: v }, layer: 1, site: 'ln3', coeff: 1 }, 400, /site/],
    [{ vector: { values: v }, layer: 3, site: 'ln1', coeff: 1 }, 422, /ln1 hook points are 0\.\.2/],
    [{ vector: { values: v }, layer: 1, op: 'scale', coeff: 1 }, 400, /op/],
  ];
  for (const [iv, status, message] of refused) {
    const r = await post(app, '/v1/generate', { ...body, interventions: [iv] });
    t.equal(r.statusCode, status, r.body);
    t.match(r.json().error.message, message);
  }
  const read = await post(app, '/v1/activations', { prompt: 'Hello', layers: [0, 2], site: 'mlp_out', reduce: 'last' });
  t.equal(read.statusCode, 200);
  t.same(Object.keys(read.json().activations), ['0', '2']);
  t.equal((await post(app, '/v1/activations', { prompt: 'Hello', layers: [3], site: 'mlp_out' })).statusCode, 422);
  const sweep = await post(app, '/v1/sweep', {
    prompt: 'Hello',
    vector: { values: v },
    layers: [1],
    coeffs: [0.5, 2],
    site: 'ln2',
    op: 'clamp',
    max_new_tokens: 4,
  });
  t.equal(sweep.statusCode, 200, sweep.body);
  t.match(sweep.json().receipt.runs[1].interventions[0], { site: 'ln2', op: 'clamp' });
  t.match((await post(app, '/v1/replay', { receipt: sweep.json().receipt })).json(), { identical: true });
});

t.test('diagnostics: erased share, logit lens, similar vectors, pair consistency', async (t) => {
  const constant = new Array(H).fill(0.5);
  const made = await post(app, '/v1/vectors', { name: 'constant', values: constant });
  t.equal(made.statusCode, 201);
  t.match(made.json().warnings, [/all-ones direction/], 'registering a vector LayerNorm erases warns');
  const c = (await app.inject('/v1/vectors/constant/diagnostics')).json();
  t.ok(Math.abs(c.ln_erased_fraction - 1) < 1e-9, 'a constant vector: all of it erased');
  const zeroMean = Array.from({ length: H }, (_, i) => (i % 2 ? 1 : -1) * (1 + i / H));
  const mean = zeroMean.reduce((a, b) => a + b, 0) / H;
  const centred = zeroMean.map((x) => x - mean);
  const z = await post(app, '/v1/vectors', { name: 'zero-mean', values: centred });
  t.notOk('warnings' in z.json());
  const zd = (await app.inject('/v1/vectors/zero-mean/diagnostics')).json();
  t.ok(Math.abs(zd.ln_erased_fraction) < 1e-9, 'a zero-mean vector: none erased');
  t.ok(Math.abs(zd.norm - norm(centred)) < 1e-4, 'norm');
  // the logit lens by hand: W_U · ln_f(v) in float64
  const ref = loadReference(model);
  const g = ref.w.get('ln_f.weight')!;
  const b = ref.w.get('ln_f.bias')!;
  const m = centred.reduce((a, x) => a + x, 0) / H;
  const varc = centred.reduce((a, x) => a + (x - m) ** 2, 0) / H;
  const y = centred.map((x, i) => ((x - m) / Math.sqrt(varc + ref.eps)) * g[i] + b[i]);
  const wte = ref.w.get('wte.weight')!;
  const scores = Array.from({ length: ref.vocab }, (_, j) => {
    let s = 0;
    for (let i = 0; i < H; i++) s += y[i] * wte[j * H + i];
    return s;
  });
  const order = [...scores.keys()].sort((a, b) => scores[b] - scores[a]);
  t.same(
    zd.logit_lens.top.map((x: { id: number }) => x.id),
    order.slice(0, 10),
    'the ten tokens it promotes',
  );
  t.same(
    zd.logit_lens.bottom.map((x: { id: number }) => x.id),
    order.slice(-10).reverse(),
    'the ten it suppresses',
  );
  t.ok(Math.abs(zd.logit_lens.top[0].score - scores[order[0]]) < 1e-3 * Math.abs(scores[order[0]]), 'scores');
  // similar: a scaled copy (cosine 1), a negated copy (−1), an orthogonal-ish one
  await post(app, '/v1/vectors', { name: 'twice', values: centred.map((x) => 2 * x) });
  await post(app, '/v1/vectors', { name: 'minus', values: centred.map((x) => -x) });
  const sim = (await app.inject('/v1/vectors/zero-mean/diagnostics')).json().similar;
  t.match(sim.slice(0, 2), [{ name: 'minus' }, { name: 'twice' }], 'by |cosine|');
  t.ok(Math.abs(sim[0].cosine + 1) < 1e-6 && Math.abs(sim[1].cosine - 1) < 1e-6);
  t.notOk('pair_consistency' in zd, 'no pairs: no pair consistency');
  const pca = (await app.inject('/v1/vectors/pca-false/diagnostics')).json();
  t.type(pca.pair_consistency, 'number', 'a pair recipe keeps its pair consistency');
  t.equal((await app.inject('/v1/vectors/nope/diagnostics')).statusCode, 404);
});
