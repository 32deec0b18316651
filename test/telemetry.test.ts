/**
 * Per-token telemetry (docs/architecture.md §4) against the float64 reference: each generated token's logprob
 * under the unsteered model on the same prefix, KL(steered ‖ unsteered) there, whether the argmaxes
 * differ, and each intervention's projection of the steered stream at its hook.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { GenerateRequest, Intervention } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { collect, refSteer, run } from './helpers/engine-util.ts';
import { startEngine } from './helpers/provider.ts';
import { loadReference, logSoftmax, referenceForward } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-telemetry-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 3, embd: 64, heads: 4, ctx: 128, seed: 8, initScale: 10 });
const ref = loadReference(dir);
const H = 64;
const engine = await startEngine({ model: dir, tokenBudget: 32 });
t.teardown(async () => {
  await engine.close();
  rmSync(root, { recursive: true, force: true });
});
const rng = new Rng(9);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const vec = (scale: number) => Float32Array.from({ length: H }, () => scale * rng.normal());

const argmax = (a: Float64Array) => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);

t.test('telemetry equals the float64 reference, token by token', async (t) => {
  const dirA = vec(0.2);
  const seq = Float32Array.from({ length: 2 * H }, () => 0.3 * rng.normal());
  const interventions: Intervention[] = [
    { layer: 1, coeff: 6, values: dirA, rows: 1 },
    { layer: 2, coeff: -3, values: vec(0.2), rows: 1, positions: 'generated' },
    { layer: 1, coeff: 1, values: seq, rows: 2 },
  ];
  for (const [name, sampling] of [
    ['greedy', { temperature: 0 }],
    ['sampled', { temperature: 1, top_p: 0.9, seed: 5 }],
  ] as const) {
    // a prompt longer than the token budget: the twin is prefilled in the same chunks
    const prompt = ids(name === 'greedy' ? 9 : 40);
    const req: GenerateRequest = { prompt, max_new_tokens: 8, stop_at_eos: false, interventions, ...sampling };
    const got = await collect(engine.generate({ ...req, telemetry: true }));
    const plain = await run(engine, req);
    t.same(got.ids, plain.ids, `${name}: telemetry does not change the tokens`);
    t.same(got.logprobs, plain.logprobs, `${name}: nor their logprobs`);
    const steer = refSteer(interventions, prompt.length, H);
    const tokens: number[] = [];
    const events = [];
    for await (const e of engine.generate({ ...req, telemetry: true }))
      if (e.type === 'token' && e.id >= 0) events.push(e);
    let klSum = 0;
    let flips = 0;
    let delta = 0;
    for (const [i, e] of events.entries()) {
      const prefix = [...prompt, ...tokens];
      const s = referenceForward(ref, prefix, steer, { lastOnly: true });
      const u = referenceForward(ref, prefix, undefined, { lastOnly: true });
      const lp = logSoftmax(s.logits.at(-1)!);
      const lb = logSoftmax(u.logits.at(-1)!);
      let kl = 0;
      for (let j = 0; j < lp.length; j++) kl += Math.exp(lp[j]) * (lp[j] - lb[j]);
      const tel = e.telemetry!;
      t.ok(
        Math.abs(tel.baseline_logprob - lb[e.id]) < 1e-3,
        `${name} token ${i}: baseline_logprob ${tel.baseline_logprob} vs ${lb[e.id]}`,
      );
      t.ok(Math.abs(tel.kl - kl) < 1e-3, `${name} token ${i}: kl ${tel.kl} vs ${kl}`);
      t.equal(tel.top1_flip, argmax(lp) !== argmax(lb), `${name} token ${i}: top1_flip`);
      for (const [k, iv] of interventions.entries()) {
        if (iv.rows > 1) {
          t.equal(tel.projections[k], null, `${name} token ${i}: a sequence has no projection`);
          continue;
        }
        const x = s.resid[iv.layer].at(-1)!;
        let n = 0;
        for (const v of iv.values) n += v * v;
        let p = 0;
        for (let j = 0; j < H; j++) p += (x[j] * iv.values[j]) / Math.sqrt(n);
        t.ok(
          Math.abs(tel.projections[k]! - p) < 1e-3 * Math.max(1, Math.abs(p)),
          `${name} token ${i}: projection ${k} ${tel.projections[k]} vs ${p}`,
        );
      }
      klSum += tel.kl;
      if (tel.top1_flip) flips++;
      delta += e.logprob - tel.baseline_logprob;
      tokens.push(e.id);
    }
    const summary = got.done.telemetry!;
    t.ok(Math.abs(summary.mean_kl - klSum / events.length) < 1e-9, `${name}: mean_kl`);
    t.equal(summary.top1_flips, flips, `${name}: top1_flips`);
    t.ok(Math.abs(summary.logprob_delta - delta) < 1e-9, `${name}: logprob_delta`);
    t.ok(summary.mean_kl > 0.01, `${name}: the steering moves the distribution (${summary.mean_kl})`);
  }
});

t.test('without interventions the twin agrees: KL 0, the same logprobs, no flips', async (t) => {
  const got = await collect(
    engine.generate({ prompt: ids(6), max_new_tokens: 6, temperature: 0, stop_at_eos: false, telemetry: true }),
  );
  t.same(got.done.telemetry, { mean_kl: 0, max_kl: 0, top1_flips: 0, logprob_delta: 0 });
});

t.test('telemetry rows beside others: the same bits as alone', async (t) => {
  const req: GenerateRequest = {
    prompt: ids(12),
    max_new_tokens: 10,
    temperature: 0.8,
    seed: 3,
    stop_at_eos: false,
    telemetry: true,
    interventions: [{ layer: 2, coeff: 4, values: vec(0.2), rows: 1 }],
  };
  const alone = await collect(engine.generate(req));
  const others = Array.from({ length: 6 }, (_, i) =>
    run(engine, { prompt: ids(3 + 7 * i), max_new_tokens: 12, temperature: 1, seed: i, stop_at_eos: false }),
  );
  const [mixed] = await Promise.all([collect(engine.generate(req)), ...others]);
  t.same(mixed.ids, alone.ids);
  t.same(mixed.logprobs, alone.logprobs);
  t.same(mixed.done.telemetry, alone.done.telemetry);
});

t.test('refused when the twin cannot fit', async (t) => {
  const small = await startEngine({ model: dir, kvCacheTokens: 100 });
  t.teardown(() => small.close());
  const req = { prompt: ids(5), max_new_tokens: 50, telemetry: true };
  t.throws(() => small.generate(req), {
    status: 422,
    message: /telemetry.*twice the reservation.*kv_cache_tokens: 100/,
  });
  t.doesNotThrow(() => small.generate({ ...req, telemetry: false }), 'without telemetry it fits');
});
