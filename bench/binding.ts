/**
 * Per-pass cost of the two bindings of ONNX Runtime on the CPU provider (docs/architecture.md §7):
 * one decode step through the model runner with onnxruntime-node (the host graph, its cache fed from
 * host memory) and with the capi binding (the device graph, its cache OrtValues kept in the binding),
 * on a small model whose arithmetic is a small part of a pass: what is left is each binding's
 * overhead (tensors made, copied in and out, outputs bound) and what its cache path costs. Measured
 * alternately in one run (the machine is shared: only ratios within a run mean anything), the best
 * round of each kept. Both caches hold zeros: the two runners' `last_logits` must be the same bits.
 *
 *   npm run bench:binding [-- --layers 2 --embd 64 --rows 1,8 --past 48 --steps 50 --rounds 5 --threads 1]
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { KvBlock } from '../src/engine/kv/store.ts';
import type { ForwardInput } from '../src/engine/pass.ts';
import { ModelRunner } from '../src/engine/runner.ts';
import type { RuntimeName } from '../src/engine/runtime/names.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';

const { values: o } = parseArgs({
  options: {
    layers: { type: 'string', default: '2' },
    embd: { type: 'string', default: '64' },
    rows: { type: 'string', default: '1,8' },
    past: { type: 'string', default: '48' },
    steps: { type: 'string', default: '50' },
    rounds: { type: 'string', default: '5' },
    threads: { type: 'string', default: '1' },
  },
});
const root = mkdtempSync(join(tmpdir(), 'steerd-bench-binding-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: +o.layers!, embd: +o.embd!, heads: 4, ctx: 256, seed: 1, initScale: 5 });

const names: RuntimeName[] = ['node', 'capi'];
const runners = new Map<RuntimeName, ModelRunner>();
for (const n of names) runners.set(n, await ModelRunner.open({ model: dir, threads: +o.threads!, runtime: n }));
const { nLayer, nHead, headDim } = runners.get('node')!.kv;
const past = +o.past!;
const P = Math.ceil((past + 1) / 16) * 16;

/** A decode step of B rows over `past` cached tokens of zeros: host arrays, or the binding's own tensors. */
async function input(n: RuntimeName, B: number): Promise<{ inp: ForwardInput; dispose(): void }> {
  const runner = runners.get(n)!;
  let k: KvBlock[];
  let v: KvBlock[];
  let dispose = () => {};
  if (runner.updater) {
    const none = { row: 0, keep: 0, src: 0, from: 0, count: 0 };
    const z = await runner.updater.update(null, null, new Array(B).fill(none), P);
    [k, v] = [z.k, z.v];
    dispose = () => {
      for (const x of [...z.k, ...z.v]) x.dispose();
    };
  } else {
    const block = () => new Float32Array(B * nHead * P * headDim);
    [k, v] = [Array.from({ length: nLayer }, block), Array.from({ length: nLayer }, block)];
  }
  return {
    inp: {
      ids: Array.from({ length: B }, (_, b) => [(b * 7919) % 50000]),
      pos: Array.from({ length: B }, () => [past]),
      newLen: new Array(B).fill(1),
      pastLen: new Array(B).fill(past),
      groups: [{ k, v, P, rows: B }],
      steer: { add: new Map(), proj: new Map() },
    },
    dispose,
  };
}

const step = async (n: RuntimeName, inp: ForwardInput) => {
  const runner = runners.get(n)!;
  const out = await runner.forward(inp);
  runner.endStep();
  return out;
};

const results: Record<string, Record<string, number>> = {};
for (const B of o.rows!.split(',').map(Number)) {
  const inputs = new Map(await Promise.all(names.map(async (n) => [n, await input(n, B)] as const)));
  const want = (await step('node', inputs.get('node')!.inp)).lastLogits;
  const got = (await step('capi', inputs.get('capi')!.inp)).lastLogits;
  for (let i = 0; i < want.length; i++)
    if (!Object.is(want[i], got[i])) throw new Error(`capi's last_logits differ from node's at ${B} rows, index ${i}`);
  const best = new Map<RuntimeName, number>();
  for (let r = 0; r < +o.rounds!; r++) {
    for (const n of names) {
      const { inp } = inputs.get(n)!;
      await step(n, inp);
      const t0 = performance.now();
      for (let s = 0; s < +o.steps!; s++) await step(n, inp);
      best.set(n, Math.min(best.get(n) ?? Number.POSITIVE_INFINITY, (performance.now() - t0) / +o.steps!));
    }
  }
  for (const x of inputs.values()) x.dispose();
  results[`${B} rows`] = {
    node_ms: +best.get('node')!.toFixed(3),
    capi_ms: +best.get('capi')!.toFixed(3),
    'capi/node': +(best.get('capi')! / best.get('node')!).toFixed(3),
  };
}
for (const r of runners.values()) await r.close();
rmSync(root, { recursive: true, force: true });
console.log(
  `ms per decode step (best of ${o.rounds} rounds of ${o.steps}), ${o.layers} layers × ${o.embd}, ${past} cached tokens, ${o.threads} thread(s); capi/node > 1: capi slower`,
);
console.table(results);
console.log(JSON.stringify({ bench: 'binding', past, layers: +o.layers!, embd: +o.embd!, results }));
