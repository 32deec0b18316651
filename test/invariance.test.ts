/**
 * Batch invariance, bit for bit (docs/architecture.md §3): a request's tokens and logprobs do not depend on
 * what shares its batch — neighbours of other lengths and size classes, another row count, its
 * prompt prefilled alone or grouped, rows joining and leaving around it — for greedy and sampled
 * requests. At the graph's level: a row's logits are the same bits alone and in any composition.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import t from 'tap';
import type { EngineOptions } from '../src/engine/engine.ts';
import type { GenerateRequest } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { buildGraph } from '../src/model/graph.ts';
import { Rng } from '../src/util/rng.ts';
import { type Completion, run } from './helpers/engine-util.ts';
import { noCache, rightPad, runServe, type ServeGroup } from './helpers/graph-run.ts';
import { startEngine } from './helpers/provider.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-invariance-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
// head size 64, as in every GPT-2: the kernels' blocking is the real one
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 2, embd: 128, heads: 2, ctx: 256, seed: 5, initScale: 10 });
const rng = new Rng(17);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const H = 128;

/** Exact equality of two completions: token ids and every logprob's bits. */
function sameBits(a: Completion, b: Completion): string | undefined {
  if (a.ids.length !== b.ids.length || a.ids.some((x, i) => x !== b.ids[i])) return `tokens ${a.ids} vs ${b.ids}`;
  const i = a.logprobs.findIndex((x, j) => !Object.is(x, b.logprobs[j]));
  return i < 0 ? undefined : `logprob ${i}: ${a.logprobs[i]} vs ${b.logprobs[i]}`;
}

t.test('engine: the same requests give the same bits alone and in many batch compositions', async (t) => {
  const steer = Float32Array.from({ length: H }, () => 0.3 * rng.normal());
  // the requests watched: greedy and sampled; short, medium, and long enough to be prefilled in
  // chunks (token budget 128) and to sit in the largest size class
  const watched: GenerateRequest[] = [
    { prompt: ids(5), max_new_tokens: 24, temperature: 0, stop_at_eos: false },
    { prompt: ids(40), max_new_tokens: 24, temperature: 0.9, top_p: 0.95, seed: 7, stop_at_eos: false },
    { prompt: ids(150), max_new_tokens: 24, temperature: 1, top_k: 50, seed: 3, stop_at_eos: false },
    {
      prompt: ids(12),
      max_new_tokens: 24,
      temperature: 0.7,
      seed: 11,
      stop_at_eos: false,
      interventions: [{ layer: 1, coeff: 4, values: steer, rows: 1 }],
    },
  ];
  // neighbours of every size class, with other lengths and sampling
  const noise = (n: number, longest = 180): GenerateRequest[] =>
    Array.from({ length: n }, (_, i) => ({
      prompt: ids(1 + Math.floor(rng.next() * longest)),
      max_new_tokens: 4 + Math.floor(rng.next() * 40),
      temperature: i % 2 ? 0 : 1.2,
      seed: i,
      stop_at_eos: false,
    }));
  const start = (o: Partial<EngineOptions> = {}) =>
    startEngine({ model: dir, tokenBudget: 128, provider: 'cpu', lean: true, ...o });

  const alone: Completion[] = [];
  {
    const e = await start();
    for (const r of watched) alone.push(await run(e, r));
    await e.close();
  }
  const compositions: [string, Partial<EngineOptions>, GenerateRequest[], number][] = [
    ['all four at once', {}, [], 0],
    ['prefilled in groups with short prompts of other lengths', {}, noise(12, 30), 0],
    ['with 12 neighbours of every class', {}, noise(12), 0],
    ['batch capacity 3: rows join and leave around them', { batchCapacity: 3 }, noise(6), 0],
    ['neighbours arriving while they decode', { batchCapacity: 16 }, noise(10), 15],
    ['a KV budget of 600 tokens: admission waits', { kvCacheTokens: 600 }, noise(8), 0],
    // alone, the unsteered requests ran the lean graph (no hook points); here every pass runs the full one
    ['the graph with every hook point for every pass', { lean: false }, noise(4), 0],
  ];
  for (const [name, opts, neighbours, stagger] of compositions) {
    const e = await start(opts);
    const mixed = [
      ...neighbours.slice(0, neighbours.length >> 1),
      ...watched,
      ...neighbours.slice(neighbours.length >> 1),
    ];
    const runs = mixed.map(async (r, i) => {
      if (stagger) await new Promise((res) => setTimeout(res, stagger * i));
      return run(e, r);
    });
    const got = await Promise.all(runs);
    for (const [w, r] of watched.entries()) {
      const diff = sameBits(got[mixed.indexOf(r)], alone[w]);
      t.notOk(
        diff,
        `${name}: request ${w} (${r.temperature ? 'sampled' : 'greedy'}, prompt ${r.prompt.length})${diff ? `: ${diff}` : ''}`,
      );
    }
    await e.close();
  }
});

t.test("graph: a row's logits are the same bits alone, grouped, padded and beside rows of other lengths", async (t) => {
  const { file } = buildGraph(dir, { serving: { groups: 3 }, fileName: 'serve-inv.onnx' });
  const s = await ort.InferenceSession.create(file);
  const dims = { nLayer: 2, nHead: 2, nEmbd: H, vocab: 50257 };
  const V = dims.vocab;
  const hd = H / dims.nHead;
  const row = (out: ort.InferenceSession.ReturnType, b: number) =>
    new Uint32Array((out.last_logits.data as Float32Array).slice(b * V, (b + 1) * V).buffer);
  const equalBits = (a: Uint32Array, b: Uint32Array) => a.length === b.length && a.every((x, i) => x === b[i]);
  const prompts = [ids(7), ids(16), ids(33), ids(90)];
  // prefill: each prompt alone (padded to 16), then all together (padded to 96) in one group
  const alone: ort.InferenceSession.ReturnType[] = [];
  for (const p of prompts) {
    const T = Math.ceil(p.length / 16) * 16;
    alone.push(
      await runServe(s, dims, { ...rightPad([p], T), pastLen: [0], groups: [noCache(1), noCache(), noCache()] }),
    );
  }
  const together = await runServe(s, dims, {
    ...rightPad(prompts, 96),
    pastLen: prompts.map(() => 0),
    groups: [noCache(4), noCache(), noCache()],
  });
  for (const [b, p] of prompts.entries())
    t.ok(equalBits(row(together, b), row(alone[b], 0)), `prefill of ${p.length} tokens: alone = in a group of 4`);

  // a decode step: the cache of prompt b in a group with P slots (rows' tails unused)
  const cache = (members: number[], P: number): ServeGroup => {
    const g: ServeGroup = { rows: members.length, P, k: [], v: [] };
    for (let l = 0; l < dims.nLayer; l++) {
      for (const kv of ['key', 'value'] as const) {
        const a = new Float32Array(members.length * dims.nHead * P * hd);
        for (const [r, b] of members.entries()) {
          const fresh = alone[b][`new.${l}.${kv}`].data as Float32Array;
          const T = Math.ceil(prompts[b].length / 16) * 16;
          for (let h = 0; h < dims.nHead; h++)
            a.set(fresh.subarray(h * T * hd, (h * T + prompts[b].length) * hd), (r * dims.nHead + h) * P * hd);
        }
        (kv === 'key' ? g.k : g.v).push(a);
      }
    }
    return g;
  };
  const step = (members: number[][], P: number[]) => {
    const order = members.flat();
    return runServe(s, dims, {
      ids: order.map((b) => [b + 100]),
      pos: order.map((b) => [prompts[b].length]),
      newLen: order.map(() => 1),
      pastLen: order.map((b) => prompts[b].length),
      groups: members.map((m, x) => (m.length ? cache(m, P[x]) : noCache())),
    });
  };
  const ref = [];
  for (const b of prompts.keys())
    ref.push(row(await step([[b], [], []], [Math.ceil(prompts[b].length / 16) * 16, 0, 0]), 0));
  const layouts: [string, number[][], number[]][] = [
    ['all four in one group of 96 slots', [[0, 1, 2, 3], [], []], [96, 0, 0]],
    ['short ones in 64 slots, the long one alone in 128', [[0, 1, 2], [3], []], [64, 128, 0]],
    ['three groups, other orders, 256 slots', [[2], [3, 0], [1]], [48, 256, 32]],
  ];
  for (const [name, members, P] of layouts) {
    const out = await step(members, P);
    for (const [r, b] of members.flat().entries())
      t.ok(equalBits(row(out, r), ref[b]), `${name}: the row of ${prompts[b].length} tokens`);
  }
  await s.release();
});
