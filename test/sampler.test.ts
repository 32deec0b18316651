import t from 'tap';
import { Sampler } from '../src/engine/sampler.ts';

const logits = Float32Array.from([2.0, 1.0, 0.5, 3.0, -1.0]);
const base = { temperature: 1, top_k: 0, top_p: 1, frequency_penalty: 0, presence_penalty: 0 };

/** log Σ exp(l), as the serving graph's `last_lse` gives it to the sampler. */
const logZ = (l: ArrayLike<number>) => Math.log(Array.from(l).reduce((a, x) => a + Math.exp(x), 0));
const lse = logZ(logits);

/** The expected distribution, computed independently: softmax(l / T), keep top-k, then the top-p prefix. */
function expected(l: number[], T: number, k: number, p: number): number[] {
  const w = l.map((x) => Math.exp(x / T));
  const order = w.map((_, i) => i).sort((a, b) => w[b] - w[a]);
  const kept = order.slice(0, k || l.length);
  const total = kept.reduce((s, i) => s + w[i], 0);
  const out = new Array(l.length).fill(0);
  let cum = 0;
  for (const i of kept) {
    out[i] = w[i];
    cum += w[i] / total;
    if (cum >= p) break;
  }
  const z = out.reduce((s, x) => s + x, 0);
  return out.map((x) => x / z);
}

function frequencies(params: typeof base, n = 20000, l = logits): number[] {
  const s = new Sampler(params, 123, l.length);
  const f = new Array(l.length).fill(0);
  const z = logZ(l);
  for (let i = 0; i < n; i++) f[s.sample(l, z).id] += 1 / n;
  return f;
}

t.test('sampled frequencies follow temperature, top-k and top-p', async (t) => {
  const cases: [string, typeof base][] = [
    ['plain', base],
    ['temperature 0.5', { ...base, temperature: 0.5 }],
    ['temperature 2', { ...base, temperature: 2 }],
    ['top_k 2', { ...base, top_k: 2 }],
    ['top_p 0.8', { ...base, top_p: 0.8 }],
    ['top_k 3 then top_p 0.7', { ...base, top_k: 3, top_p: 0.7 }],
  ];
  for (const [name, p] of cases) {
    const want = expected(Array.from(logits), p.temperature, p.top_k, p.top_p);
    const got = frequencies(p);
    const err = Math.max(...got.map((g, i) => Math.abs(g - want[i])));
    t.ok(err < 0.015, `${name}: frequencies ${got.map((x) => x.toFixed(3))} vs ${want.map((x) => x.toFixed(3))}`);
    t.ok(
      got.every((g, i) => want[i] > 0 || g === 0),
      `${name}: nothing outside the kept set`,
    );
  }
});

t.test('a wider vocabulary: top-k and top-p keep exactly the sorted prefix, ties to the lower id', async (t) => {
  // 20 likely tokens at scattered ids over a tail of 1980 exactly equal logits: the cut falls
  // inside the tail for top-k 25 (the five lowest tail ids are kept) and inside the head for top-p
  const V = 2000;
  const wide = new Float32Array(V);
  const head = Array.from({ length: 20 }, (_, j) => (j * 337 + 11) % V);
  for (const [j, id] of head.entries()) wide[id] = 2 + 0.15 * j;
  const cases: [string, typeof base][] = [
    ['top_k 25', { ...base, top_k: 25 }],
    ['top_k 20', { ...base, top_k: 20 }],
    ['top_p 0.5', { ...base, top_p: 0.5 }],
    ['top_p 0.995 (into the tail)', { ...base, top_p: 0.995 }],
    ['top_k 30 then top_p 0.9', { ...base, top_k: 30, top_p: 0.9 }],
  ];
  for (const [name, p] of cases) {
    const want = expected(Array.from(wide), p.temperature, p.top_k, p.top_p);
    const got = frequencies(p, 3000, wide);
    const err = Math.max(...got.map((g, i) => Math.abs(g - want[i])));
    t.ok(err < 0.02, `${name}: largest frequency error ${err.toFixed(4)}`);
    const outside = got.findIndex((g, i) => g > 0 && want[i] === 0);
    t.equal(outside, -1, `${name}: nothing outside the kept set (${want.filter((w) => w > 0).length} tokens)`);
  }
});

t.test('greedy, logprob and penalties', async (t) => {
  const s = new Sampler({ ...base, temperature: 0 }, 1, 5);
  const { id, logprob } = s.sample(logits, lse);
  t.equal(id, 3);
  const z = Array.from(logits).reduce((a, x) => a + Math.exp(x), 0);
  t.ok(Math.abs(logprob - (3 - Math.log(z))) < 1e-9, 'log-softmax of the raw logits');
  const pen = new Sampler({ ...base, temperature: 0, frequency_penalty: 0.6 }, 1, 5);
  pen.observe(3);
  t.equal(pen.sample(logits, lse).id, 3, '3.0 − 0.6 still wins');
  pen.observe(3);
  t.equal(pen.sample(logits, lse).id, 0, '3.0 − 1.2 loses to 2.0');
  const pres = new Sampler({ ...base, temperature: 0, presence_penalty: 1.5 }, 1, 5);
  pres.observe(3);
  pres.observe(3);
  t.equal(pres.sample(logits, lse).id, 0, 'presence: 3.0 − 1.5 < 2.0');
  t.equal(new Sampler({ ...base, top_k: 1 }, 9, 5).sample(logits, lse).id, 3, 'top_k 1 is greedy');
  const reported = new Sampler({ ...base, temperature: 0.7, frequency_penalty: 1 }, 5, 5);
  reported.observe(3);
  const r = reported.sample(logits, lse);
  t.ok(
    Math.abs(r.logprob - (logits[r.id] - Math.log(z))) < 1e-6,
    'logprob stays the raw model probability under penalties and temperature',
  );
  const given = new Sampler({ ...base, temperature: 0 }, 1, 5).sample(logits, 7.5);
  t.same(given, { id: 3, logprob: 3 - 7.5 }, 'a given log-sum-exp is used as the normaliser');
});
