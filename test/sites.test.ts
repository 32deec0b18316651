/**
 * Hook sites beyond the residual stream and the ablate / clamp operators, against the float64
 * reference: steered and read at every site, through incremental decoding and in mixed batches;
 * the seed notebook's bias editing (adding at ln_1's output = editing c_attn's bias).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { Intervention } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { SITES, type Site } from '../src/model/hooks.ts';
import { Rng } from '../src/util/rng.ts';
import { collect, referenceGreedy, refHooks } from './helpers/engine-util.ts';
import { range } from './helpers/graph-run.ts';
import { sameRun, startEngine } from './helpers/provider.ts';
import { loadReference, type RefModel, referenceForward } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-sites-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 3, embd: 64, heads: 4, ctx: 128, seed: 23, initScale: 10 });
const ref = loadReference(dir);
const H = 64;
const engine = await startEngine({ model: dir, tokenBudget: 16 });
t.teardown(async () => {
  await engine.close();
  rmSync(root, { recursive: true, force: true });
});
const rng = new Rng(2);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const vec = (scale: number) => Float32Array.from({ length: H }, () => scale * rng.normal());
const iv = (site: Site, layer: number, coeff: number, values: Float32Array, more: Partial<Intervention> = {}) =>
  ({ site, layer, coeff, values, rows: values.length / H, ...more }) as Intervention;

/** Greedy tokens equal the reference's, logprobs within 1e-4 of the logit range. */
async function matchesReference(t: Test, name: string, prompt: number[], ivs: Intervention[], n = 6) {
  const got = await collect(
    engine.generate({ prompt, max_new_tokens: n, temperature: 0, stop_at_eos: false, interventions: ivs }),
  );
  const want = referenceGreedy(ref, prompt, n, ivs);
  t.same(got.ids, want.ids, `${name}: greedy tokens`);
  const scale = range(referenceForward(ref, prompt, undefined, { lastOnly: true }).logits);
  const err = Math.max(...got.logprobs.map((x, i) => Math.abs(x - want.logprobs[i])));
  t.ok(err < 1e-4 * scale, `${name}: logprobs within ${(1e-4 * scale).toExponential(1)} (${err.toExponential(2)})`);
  return got.ids;
}

t.test('every site, steered: equal to the reference through incremental decoding', async (t) => {
  const prompt = ids(5);
  const unsteered = await matchesReference(t, 'unsteered', prompt, []);
  for (const site of SITES) {
    const layer = site === 'resid_pre' ? 3 : 1; // resid_pre at n_layer: before ln_f
    const steered = await matchesReference(t, `add at ${site} ${layer}`, prompt, [iv(site, layer, 3, vec(0.5))]);
    t.notSame(steered, unsteered, `${site}: the steering changes the tokens`);
  }
});

t.test('ablate and clamp: after the adds, in request order, with positions', async (t) => {
  const prompt = ids(20); // two prefill chunks of 16
  const a = vec(0.3);
  const b = Float32Array.from(a, (x, i) => x + 0.5 * Math.sin(i)); // not orthogonal to a: order matters
  await matchesReference(t, 'ablate at resid_pre 1', prompt, [iv('resid_pre', 1, 0, a, { op: 'ablate' })]);
  await matchesReference(t, 'clamp at ln1 2', prompt, [iv('ln1', 2, 1.5, a, { op: 'clamp' })]);
  const chain = [
    iv('resid_mid', 0, -2, b, { op: 'clamp' }),
    iv('resid_mid', 0, 4, vec(0.4)), // an add, listed after: still applied first
    iv('resid_mid', 0, 0, a, { op: 'ablate' }),
  ];
  const forward = await matchesReference(t, 'add, clamp, ablate at resid_mid 0', prompt, chain);
  const swapped = await matchesReference(t, 'the ops the other way round', prompt, [chain[2], chain[1], chain[0]]);
  t.notSame(forward, swapped, 'non-orthogonal ablate and clamp do not commute');
  await matchesReference(t, 'clamp only on generated tokens', prompt, [
    iv('mlp_out', 1, 3, a, { op: 'clamp', positions: 'generated' }),
  ]);
  await matchesReference(t, 'ablate only on the prompt', prompt, [
    iv('attn_out', 2, 0, b, { op: 'ablate', positions: 'prompt' }),
  ]);
});

t.test('mixed batches: rows with other sites and ops give their own results', async (t) => {
  const reqs = SITES.map((site, i) => ({
    prompt: ids(3 + 4 * i),
    interventions: [
      iv(site, site === 'resid_pre' ? 2 : 1, i % 2 ? 2 : 0.5, vec(0.4), { op: i % 3 === 2 ? 'clamp' : 'add' }),
    ],
  }));
  const alone = [];
  for (const r of reqs)
    alone.push(await collect(engine.generate({ ...r, max_new_tokens: 5, temperature: 0, stop_at_eos: false })));
  const together = await Promise.all(
    reqs.map((r) => collect(engine.generate({ ...r, max_new_tokens: 5, temperature: 0, stop_at_eos: false }))),
  );
  for (const [i, r] of reqs.entries()) {
    t.same(together[i].ids, alone[i].ids, `row ${i} (${r.interventions[0].site}): the same tokens`);
    sameRun(t, together[i].logprobs, alone[i].logprobs, `row ${i}: the same logprob bits`);
    t.same(together[i].ids, referenceGreedy(ref, r.prompt, 5, r.interventions).ids, `row ${i}: the reference's tokens`);
  }
});

t.test('every site, read: activations equal the reference', async (t) => {
  const prompt = ids(7);
  const steer = [iv('ln2', 0, 2, vec(0.3))];
  const want = referenceForward(ref, prompt, undefined, { lastOnly: true, hook: refHooks(steer, prompt.length, H) });
  for (const site of SITES) {
    const layers = site === 'resid_pre' ? [0, 3] : [0, 2];
    const got = await engine.activations({ prompt, layers, site, interventions: steer });
    for (const l of layers) {
      const a = got.activations[l];
      const exp = want.sites[site][l];
      const tol = 1e-4 * range(exp);
      let err = 0;
      for (let p = 0; p < prompt.length; p++)
        for (let i = 0; i < H; i++) err = Math.max(err, Math.abs(a[p * H + i] - exp[p][i]));
      t.ok(err <= tol, `${site} ${l}: max error ${err.toExponential(2)} <= ${tol.toExponential(2)}`);
    }
  }
});

/** The reference with one bias edited: b ← b + (coeff·v)·W, the seed notebook's way. */
function editedBias(m: RefModel, name: string, v: Float32Array, coeff: number): RefModel {
  const W = m.w.get(`${name}.weight`)!;
  const b = Float64Array.from(m.w.get(`${name}.bias`)!);
  for (let i = 0; i < H; i++) for (let j = 0; j < b.length; j++) b[j] += coeff * v[i] * W[i * b.length + j];
  return { ...m, w: new Map([...m.w, [`${name}.bias`, b]]) };
}

t.test("the seed's bias editing: adding at ln_1's (ln_2's) output = editing c_attn's (c_fc's) bias", async (t) => {
  const prompt = ids(6);
  // Love − Hate at ln1 of layer 1, unit norm: what a diff recipe at that site makes
  const love = await engine.activations({ prompt: [12, 34], layers: [1], site: 'ln1', reduce: 'last' });
  const hate = await engine.activations({ prompt: [56, 78], layers: [1], site: 'ln1', reduce: 'last' });
  const d = Float32Array.from(love.activations[1], (x, i) => x - hate.activations[1][i]);
  const n = Math.sqrt(d.reduce((a, x) => a + x * x, 0));
  const v = d.map((x) => x / n);
  for (const [site, name] of [
    ['ln1', 'h.1.attn.c_attn'],
    ['ln2', 'h.1.mlp.c_fc'],
  ] as const) {
    for (const coeff of [10, -10]) {
      const got = await collect(
        engine.generate({
          prompt,
          max_new_tokens: 6,
          temperature: 0,
          stop_at_eos: false,
          interventions: [iv(site, 1, coeff, v)],
        }),
      );
      const want = referenceGreedy(editedBias(ref, name, v, coeff), prompt, 6);
      t.same(got.ids, want.ids, `${coeff > 0 ? '+' : ''}${coeff} at ${site} 1 = ${name}.bias edited`);
      const err = Math.max(...got.logprobs.map((x, i) => Math.abs(x - want.logprobs[i])));
      t.ok(err < 1e-3, `and the logprobs (${err.toExponential(2)})`);
    }
  }
});

t.test('bad sites, layers and operators are refused before anything runs', async (t) => {
  const prompt = ids(4);
  const bad: [string, Partial<Intervention>, number, RegExp][] = [
    ['an unknown site', { site: 'ln3' as Site }, 400, /site must be one of/],
    ['layer n_layer at ln1', { site: 'ln1', layer: 3 }, 422, /ln1 hook points are 0\.\.2/],
    ['an unknown op', { op: 'scale' as Intervention['op'] }, 400, /op must be add, ablate or clamp/],
    [
      'ablate with a sequence',
      { op: 'ablate', rows: 2, values: new Float32Array(2 * H).fill(0.1) },
      422,
      /takes a direction/,
    ],
    ['clamp at the front', { op: 'clamp', positions: 'front' }, 422, /not front/],
  ];
  for (const [name, change, status, message] of bad) {
    const req = { prompt, interventions: [{ ...iv('resid_pre', 1, 1, vec(0.2)), ...change } as Intervention] };
    t.throws(() => engine.generate(req), { status, message }, name);
  }
  await t.rejects(engine.activations({ prompt, layers: [3], site: 'mlp_out' }), {
    status: 422,
    message: /mlp_out hook points are 0..2/,
  });
});
