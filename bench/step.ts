/**
 * One decode step through the model runner, for runner variants measured alternately in one run
 * (the machine is shared: only ratios within a run mean anything): each round times `--steps`
 * decode steps of every variant in turn, at each row count, and the best round of each is kept.
 * Every variant's `last_logits` must be the same bits as the first one's (the graphs and session
 * settings compared here must not change the arithmetic).
 *
 *   npm run bench:step [-- --dir DIR --rows 1,8,32 --past 48 --steps 20 --rounds 3 --variants full,lean,lean@int8]
 *
 * Variants: `full` (the runner before the lean graph: every hook point, intra-op threads spinning),
 * `fullnospin` (every hook point, threads sleeping), `leanspin` (the lean graph for passes that
 * neither steer nor read, threads spinning), `lean` (the default runner: the lean graph, threads
 * sleeping), `steered` (the default runner, one row steered at one layer: the full graph runs),
 * `noarena` (lean, no CPU memory arena), `basic` (lean, basic graph optimizations only).
 */

import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseDtype } from '../src/config.ts';
import type { ForwardInput } from '../src/engine/pass.ts';
import { ModelRunner, type RunnerOptions } from '../src/engine/runner.ts';

const { values: o } = parseArgs({
  options: {
    dir: { type: 'string', default: join(tmpdir(), 'steerd-bench-gpt2-small') },
    rows: { type: 'string', default: '1,8,32' },
    past: { type: 'string', default: '48' },
    steps: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '0' },
    variants: { type: 'string', default: 'full,lean,steered' },
  },
});
const VARIANTS: Record<string, Partial<RunnerOptions>> = {
  full: { lean: false, spinning: true },
  fullnospin: { lean: false },
  leanspin: { spinning: true },
  lean: {},
  steered: {},
  noarena: { sessionOptions: { enableCpuMemArena: false } },
  basic: { sessionOptions: { graphOptimizationLevel: 'basic' } },
};
// a variant may name a weights dtype after `@` (dtypes.ts): `lean@int8`
const names = o.variants!.split(',');
const variant = (n: string): Partial<RunnerOptions> => {
  const [base, dtype] = n.split('@');
  if (!VARIANTS[base]) throw new Error(`unknown variant ${base}`);
  return { ...VARIANTS[base], ...(dtype && { dtype: parseDtype(dtype, `variant ${n}`) }) };
};
for (const n of names) variant(n);
const levels = o.rows!.split(',').map(Number);
const past = +o.past!;
const steps = +o.steps!;

const runners = new Map<string, ModelRunner>();
for (const n of names) runners.set(n, await ModelRunner.open({ model: o.dir!, threads: +o.threads!, ...variant(n) }));
const { nLayer, nHead, headDim } = runners.get(names[0])!.kv;
const H = runners.get(names[0])!.info.n_embd;

function input(B: number, steered: boolean): ForwardInput {
  const P = Math.ceil((past + 1) / 16) * 16;
  const block = () => Float32Array.from({ length: B * nHead * P * headDim }, (_, i) => Math.sin(i) * 0.1);
  const add = new Map<string, Float32Array>();
  if (steered)
    add.set(
      'steer.6',
      Float32Array.from({ length: B * H }, (_, i) => (i < H ? Math.cos(i) : 0)),
    );
  return {
    ids: Array.from({ length: B }, (_, b) => [(b * 7919) % 50000]),
    pos: Array.from({ length: B }, () => [past]),
    newLen: new Array(B).fill(1),
    pastLen: new Array(B).fill(past),
    groups: [{ k: Array.from({ length: nLayer }, block), v: Array.from({ length: nLayer }, block), P, rows: B }],
    steer: { add, proj: new Map() },
  };
}

const results: Record<string, Record<string, number>> = {};
for (const B of levels) {
  const best = new Map<string, number>();
  const inputs = new Map(names.map((n) => [n, input(B, n === 'steered')]));
  // the same bits: every variant's logits for the unsteered rows against the first variant's of its dtype
  const firsts = new Map<string, { name: string; logits: Float32Array }>();
  for (const n of names) {
    const out = await runners.get(n)!.forward(inputs.get(n)!);
    const dtype = variant(n).dtype ?? 'float32';
    const first = firsts.get(dtype);
    if (!first) {
      firsts.set(dtype, { name: n, logits: out.lastLogits });
      continue;
    }
    const from = n === 'steered' ? 1 : 0; // row 0 is steered there
    const V = out.lastLogits.length / B;
    for (let i = from * V; i < out.lastLogits.length; i++)
      if (!Object.is(out.lastLogits[i], first.logits[i]))
        throw new Error(`${n}: last_logits differ from ${first.name}'s at ${B} rows, index ${i}`);
  }
  for (let r = 0; r < +o.rounds!; r++) {
    for (const n of names) {
      const runner = runners.get(n)!;
      const inp = inputs.get(n)!;
      await runner.forward(inp);
      const t0 = performance.now();
      for (let s = 0; s < steps; s++) await runner.forward(inp);
      const ms = (performance.now() - t0) / steps;
      best.set(n, Math.min(best.get(n) ?? Number.POSITIVE_INFINITY, ms));
    }
  }
  results[`${B} rows`] = Object.fromEntries(names.map((n) => [n, +best.get(n)!.toFixed(2)]));
  for (const n of names.slice(1))
    results[`${B} rows`][`${names[0]}/${n}`] = +(best.get(names[0])! / best.get(n)!).toFixed(3);
}
for (const r of runners.values()) await r.close();
console.log('ms per decode step (best round); a/b: how many times faster b is');
console.table(results);
