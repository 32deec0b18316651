/**
 * The sampler's cost per row, on a GPT-2-sized vocabulary (50257): plain sampling (temperature 1),
 * top-p 0.9, top-k 50 and top-k 50 + top-p 0.9, each as a ratio to greedy decoding measured in the
 * same run, on two kinds of logits: peaked (a trained model's: a few tokens hold most of the mass)
 * and flat (a random model's: top-p 0.9 keeps most of the vocabulary). Each row comes with its
 * log-sum-exp, as the serving graph's `last_lse` gives it to the engine.
 *
 *   npm run bench:sampler [-- --rows 2000]
 */
import { parseArgs } from 'node:util';
import { Sampler } from '../src/engine/sampler.ts';
import { Rng } from '../src/util/rng.ts';

const { values: o } = parseArgs({ options: { rows: { type: 'string', default: '2000' } } });
const V = 50257;
const rows = Number(o.rows);
const rng = new Rng(7);
const normal = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
const logits = {
  // a trained model's: heavy tail, a handful of tokens within a few nats of the top
  peaked: Array.from({ length: 16 }, () =>
    Float32Array.from({ length: V }, () => 3 * normal() + (rng.next() < 0.001 ? 12 : 0)),
  ),
  flat: Array.from({ length: 16 }, () => Float32Array.from({ length: V }, () => 0.05 * normal())),
};
const settings = {
  greedy: { temperature: 0, top_k: 0, top_p: 1 },
  plain: { temperature: 1, top_k: 0, top_p: 1 },
  'top_p 0.9': { temperature: 1, top_k: 0, top_p: 0.9 },
  'top_k 50': { temperature: 1, top_k: 50, top_p: 1 },
  'top_k 50 + top_p 0.9': { temperature: 1, top_k: 50, top_p: 0.9 },
};

const logSumExp = (l: Float32Array) => {
  let m = -Infinity;
  for (const x of l) m = Math.max(m, x);
  let sum = 0;
  for (const x of l) sum += Math.exp(x - m);
  return m + Math.log(sum);
};
const lse = { peaked: logits.peaked.map(logSumExp), flat: logits.flat.map(logSumExp) };

function perRow(kind: keyof typeof logits, p: (typeof settings)[keyof typeof settings]): number {
  const s = new Sampler({ ...p, frequency_penalty: 0, presence_penalty: 0 }, 1, V);
  const ls = logits[kind];
  const sample = (i: number) => s.sample(ls[i % ls.length], lse[kind][i % ls.length]);
  for (let i = 0; i < 50; i++) sample(i); // warm-up
  const t0 = performance.now();
  for (let i = 0; i < rows; i++) sample(i);
  return (performance.now() - t0) / rows;
}

console.log(`sampler, vocabulary ${V}, ${rows} rows per cell: ms per row (× greedy)\n`);
console.log(`${'setting'.padEnd(22)} ${'peaked'.padStart(16)} ${'flat'.padStart(16)}`);
const greedy = { peaked: perRow('peaked', settings.greedy), flat: perRow('flat', settings.greedy) };
for (const [name, p] of Object.entries(settings)) {
  const cell = (kind: 'peaked' | 'flat') => {
    const ms = perRow(kind, p);
    return `${ms.toFixed(3)} (${(ms / greedy[kind]).toFixed(1)}×)`.padStart(16);
  };
  console.log(`${name.padEnd(22)} ${cell('peaked')} ${cell('flat')}`);
}
