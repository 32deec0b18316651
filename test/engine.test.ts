import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { deriveVector } from '../src/engine/recipes.ts';
import type { GenerateRequest, Intervention } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { collect, referenceGreedy, run } from './helpers/engine-util.ts';
import { maxAbsDiff, range } from './helpers/graph-run.ts';
import { startEngine } from './helpers/provider.ts';
import { loadReference, referenceForward } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-engine-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 3, embd: 64, heads: 4, ctx: 128, seed: 11, initScale: 10 });
const ref = loadReference(dir);
const H = 64;
const engine = await startEngine({ model: dir, batchCapacity: 32, tokenBudget: 48 });
t.teardown(async () => {
  await engine.close();
  rmSync(root, { recursive: true, force: true });
});

const rng = new Rng(3);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const direction = (scale: number): Float32Array => Float32Array.from({ length: H }, () => scale * rng.normal());
const iv = (
  layer: number,
  coeff: number,
  values: Float32Array,
  positions?: Intervention['positions'],
): Intervention => ({
  layer,
  coeff,
  values,
  rows: values.length / H,
  positions,
});

t.test('greedy generation equals a full-recompute greedy decode of the float64 reference', async (t) => {
  const prompt = ids(6);
  const cases: [string, Intervention[]][] = [
    ['unsteered', []],
    ['direction at all positions, layers 1 and 3', [iv(1, 4, direction(0.1)), iv(3, -2, direction(0.1))]],
    [
      'ActAdd-style sequence on the first 3 positions',
      [
        iv(
          0,
          1,
          Float32Array.from({ length: 3 * H }, () => 0.4 * rng.normal()),
        ),
      ],
    ],
  ];
  const outputs: number[][] = [];
  for (const [name, interventions] of cases) {
    const got = await run(engine, { prompt, max_new_tokens: 10, temperature: 0, stop_at_eos: false, interventions });
    const want = referenceGreedy(ref, prompt, 10, interventions);
    t.same(got.ids, want.ids, `${name}: tokens`);
    t.ok(maxAbsDiff(got.logprobs, want.logprobs) < 1e-3, `${name}: logprobs`);
    t.equal(got.done.finish_reason, 'length');
    t.same(got.done.usage, { prompt_tokens: 6, completion_tokens: 10 });
    outputs.push(got.ids);
  }
  t.not(outputs[0].join(), outputs[1].join(), 'steering changes the completion');
  t.not(outputs[0].join(), outputs[2].join(), 'the front sequence changes the completion');
});

/** 24 different requests: lengths, sampling parameters, interventions. */
function mixedRequests(): GenerateRequest[] {
  const out: GenerateRequest[] = [];
  for (let i = 0; i < 24; i++) {
    const prompt = ids(1 + ((i * 7) % 23));
    const interventions: Intervention[] = [];
    if (i % 3 === 1) interventions.push(iv(i % 4, 3, direction(0.1)));
    if (i % 5 === 2) interventions.push(iv(2, 2, direction(0.1), 'generated'), iv(0, 1, direction(0.2), 'prompt'));
    if (i % 7 === 3 && prompt.length >= 2)
      interventions.push(
        iv(
          1,
          1,
          Float32Array.from({ length: 2 * H }, () => 0.3 * rng.normal()),
        ),
      );
    out.push({
      prompt,
      max_new_tokens: 4 + (i % 9),
      temperature: i % 2 ? 0 : 0.9,
      top_k: i % 4 === 0 ? 40 : 0,
      top_p: i % 6 === 0 ? 0.8 : 1,
      frequency_penalty: i % 5 === 0 ? 0.5 : 0,
      presence_penalty: i % 8 === 0 ? 0.3 : 0,
      seed: 1000 + i,
      stop_at_eos: false,
      interventions,
    });
  }
  return out;
}

t.test('batch invariance: 24 requests at once give the tokens each gives alone', async (t) => {
  const reqs = mixedRequests();
  const alone: number[][] = [];
  for (const r of reqs) alone.push((await run(engine, r)).ids);
  const together = await Promise.all(reqs.map((r) => run(engine, r)));
  for (const [i, c] of together.entries()) t.same(c.ids, alone[i], `request ${i}`);
  // with fewer slots than requests, rows join and leave a running batch continuously
  const small = await startEngine({ model: dir, batchCapacity: 5, tokenBudget: 16 });
  const queued = await Promise.all(reqs.map((r) => run(small, r)));
  await small.close();
  t.same(
    queued.map((c) => c.ids),
    alone,
    'capacity 5, budget 16: same tokens',
  );
  t.ok(
    queued.some((c) => c.done.timings.queue_ms > together[0].done.timings.queue_ms),
    'some requests waited for a slot',
  );
});

t.test('seeds: same seed, same output; different seeds, different outputs', async (t) => {
  const prompt = ids(4);
  const req = { prompt, max_new_tokens: 16, temperature: 1.2, stop_at_eos: false };
  const a = await run(engine, { ...req, seed: 7 });
  const b = await run(engine, { ...req, seed: 7 });
  const c = await run(engine, { ...req, seed: 8 });
  t.same(a.ids, b.ids);
  t.equal(a.done.seed, 7);
  t.not(a.ids.join(), c.ids.join());
  const far = await run(engine, { ...req, seed: 2 ** 32 + 7 });
  t.not(far.ids.join(), (await run(engine, { ...req, seed: 6 })).ids.join(), 'seeds that differ above 32 bits differ');
  const unseeded = await run(engine, req);
  t.type(unseeded.done.seed, 'number', 'a random seed is reported');
  t.same((await run(engine, { ...req, seed: unseeded.done.seed })).ids, unseeded.ids, 'and reproduces the output');
});

t.test('positions policies do what they say', async (t) => {
  const prompt = ids(7);
  const layers = [0, 1, 2, 3];
  const plain = await engine.activations({ prompt, layers });
  const same = (a: Float32Array, b: Float32Array) => maxAbsDiff(a, b) === 0;

  const gen = [iv(1, 5, direction(0.2), 'generated')];
  const withGen = await engine.activations({ prompt, layers, interventions: gen });
  t.ok(
    layers.every((l) => same(withGen.activations[l], plain.activations[l])),
    'generated-only leaves the prompt activations untouched',
  );
  const g = await run(engine, { prompt, max_new_tokens: 6, temperature: 0, stop_at_eos: false, interventions: gen });
  const u = await run(engine, { prompt, max_new_tokens: 6, temperature: 0, stop_at_eos: false });
  t.equal(g.ids[0], u.ids[0], 'the first token comes from the untouched prompt pass');
  t.same(g.ids, referenceGreedy(ref, prompt, 6, gen).ids, 'later tokens are steered as the reference says');

  const k = 3;
  const front = [
    iv(
      1,
      1,
      Float32Array.from({ length: k * H }, () => 0.5 * rng.normal()),
    ),
  ];
  const withFront = await engine.activations({ prompt, layers, interventions: front });
  const row = (a: Float32Array, p: number) => a.subarray(p * H, (p + 1) * H);
  for (let p = 0; p < prompt.length; p++) {
    const changed = !same(row(withFront.activations[1], p), row(plain.activations[1], p));
    t.equal(changed, p < k, `front: hook 1 position ${p} ${p < k ? 'steered' : 'untouched'}`);
  }
  const f = await run(engine, { prompt, max_new_tokens: 6, temperature: 0, stop_at_eos: false, interventions: front });
  t.same(f.ids, referenceGreedy(ref, prompt, 6, front).ids, 'front applies to the prompt pass only');

  const promptOnly = [iv(2, 3, direction(0.2), 'prompt')];
  const p = await run(engine, {
    prompt,
    max_new_tokens: 6,
    temperature: 0,
    stop_at_eos: false,
    interventions: promptOnly,
  });
  t.same(p.ids, referenceGreedy(ref, prompt, 6, promptOnly).ids, 'prompt-only: steered prompt, unsteered generation');
});

t.test('activations equal the reference, reduced as asked', async (t) => {
  const prompt = ids(5);
  const steer = [iv(2, 2, direction(0.2))];
  const want = referenceForward(
    ref,
    prompt,
    (l) => (l === 2 ? Float64Array.from(steer[0].values, (v) => 2 * v) : undefined),
    { lastOnly: true }, // the stream is read, not the logits
  );
  const none = await engine.activations({ prompt, layers: [1, 3], interventions: steer });
  t.equal(none.rows, 5);
  for (const l of [1, 3]) {
    const flat = want.resid[l].flatMap((r) => Array.from(r));
    t.ok(maxAbsDiff(none.activations[l], flat) <= 1e-4 * range(want.resid[l]), `layer ${l} per position`);
  }
  const last = await engine.activations({ prompt, layers: [3], reduce: 'last', interventions: steer });
  t.ok(maxAbsDiff(last.activations[3], want.resid[3][4]) <= 1e-4 * range(want.resid[3]), 'last');
  const mean = await engine.activations({ prompt, layers: [3], reduce: 'mean', interventions: steer });
  const m = want.resid[3][0].map((_, i) => want.resid[3].reduce((s, r) => s + r[i], 0) / 5);
  t.ok(maxAbsDiff(mean.activations[3], m) <= 1e-4 * range(want.resid[3]), 'mean');
});

t.test('stop strings, EOS and text', async (t) => {
  const prompt = ids(3);
  const free = await run(engine, { prompt, max_new_tokens: 12, temperature: 0, stop_at_eos: false });
  t.equal(free.text, engine.tokenizer.decode(free.ids), 'streamed deltas add up to the decoded text');
  t.equal(free.done.text, free.text);
  const cut = free.text.slice(3, 6);
  const at = free.text.indexOf(cut);
  const stopped = await run(engine, { prompt, max_new_tokens: 12, temperature: 0, stop_at_eos: false, stop: [cut] });
  t.equal(stopped.done.finish_reason, 'stop');
  t.equal(stopped.done.text, free.text.slice(0, at), 'text ends before the stop string');
  t.equal(stopped.text, stopped.done.text, 'no streamed text beyond the stop');
  // make EOS the greedy choice: a huge push along wte[EOS] at the last hook
  const eosDir = Float32Array.from(ref.w.get('wte.weight')!.subarray(50256 * H, 50257 * H));
  const eos = await run(engine, { prompt, max_new_tokens: 5, temperature: 0, interventions: [iv(3, 1000, eosDir)] });
  t.equal(eos.done.finish_reason, 'eos');
  t.same(eos.ids, [], 'EOS is not part of the completion');
});

t.test('cancellation frees the slot; the rest of the batch is unchanged', async (t) => {
  const eng = await startEngine({ model: dir, batchCapacity: 2 });
  t.teardown(() => eng.close());
  const reqs = [ids(4), ids(6), ids(5)].map((prompt, i) => ({
    prompt,
    max_new_tokens: 40,
    temperature: 0,
    seed: i,
    stop_at_eos: false,
  }));
  const alone = [];
  for (const r of reqs) alone.push((await run(eng, r)).ids);
  const ac = new AbortController();
  let thirdStartedAt = -1;
  let secondTokens = 0;
  const first = collect(eng.generate(reqs[0], { signal: ac.signal }), (n) => n === 3 && ac.abort());
  const second = collect(eng.generate(reqs[1]), (n) => {
    secondTokens = n;
  });
  const third = collect(eng.generate(reqs[2]), (n) => {
    if (n === 1) thirdStartedAt = secondTokens;
  });
  const [a, b, c] = await Promise.all([first, second, third]);
  t.equal(a.done.finish_reason, 'cancelled');
  t.ok(a.ids.length >= 3 && a.ids.length < 40, `cancelled after ${a.ids.length} tokens`);
  t.same(a.ids, alone[0].slice(0, a.ids.length), 'what it produced before was right');
  t.same(b.ids, alone[1], 'its neighbour finished unchanged');
  t.same(c.ids, alone[2], 'the waiting request took the freed slot and finished unchanged');
  t.ok(
    thirdStartedAt >= 0 && thirdStartedAt < 40,
    `the third started while the second was running (at its token ${thirdStartedAt})`,
  );
  t.equal(eng.inFlight, 0);
});

t.test(
  'a steering coefficient that overflows float32 fails its own request with 422, not its neighbours',
  async (t) => {
    const eng = await startEngine({ model: dir, batchCapacity: 4 });
    t.teardown(() => eng.close());
    const plain = { prompt: ids(5), max_new_tokens: 8, temperature: 0, stop_at_eos: false };
    const alone = (await run(eng, plain)).ids;
    // each within float32's range, their sum beyond it: only the forward pass can tell
    const v = Float32Array.from({ length: H }, (_, i) => (i % 2 ? 1 : -1));
    const huge = { ...plain, prompt: ids(6), interventions: [iv(2, 3e38, v), iv(2, 3e38, v)] };
    const [bad, good] = await Promise.allSettled([run(eng, huge), run(eng, plain)]);
    t.equal(bad.status, 'rejected');
    t.match((bad as PromiseRejectedResult).reason, { status: 422, message: /logits are not finite.*lower the coeff/ });
    t.same(good.status === 'fulfilled' && good.value.ids, alone, 'the request beside it is unchanged');
    // overflowing mid-decode, while a long request keeps the batch (and its cache buffers) alive:
    // the next request in the freed row must not inherit non-finite keys and values
    let going!: () => void;
    const started = new Promise<void>((res) => (going = res));
    const long = collect(
      eng.generate({ prompt: ids(30), max_new_tokens: 60, temperature: 0, stop_at_eos: false }),
      (n) => n === 1 && going(),
    );
    await started; // the long request holds row 0: the overflowing one is the last row, removed by a pop
    const late = { ...huge, interventions: huge.interventions.map((x) => ({ ...x, positions: 'generated' as const })) };
    const failed = await run(eng, late).then(
      () => undefined,
      (e: { status: number }) => e,
    );
    t.equal(failed?.status, 422, 'an overflow on a generated token');
    t.same((await run(eng, plain)).ids, alone, 'the next request in its place is unchanged');
    await long;
    t.equal(eng.inFlight, 0);
  },
);

t.test('bad requests are refused before they reach a batch', async (t) => {
  const ok: GenerateRequest = { prompt: ids(3), max_new_tokens: 4 };
  const bad: [string, GenerateRequest, number, RegExp][] = [
    ['empty prompt', { ...ok, prompt: [] }, 400, /prompt is empty/],
    [
      'too long',
      { ...ok, prompt: ids(100), max_new_tokens: 29 },
      422,
      /prompt \(100 tokens\) \+ max_new_tokens \(29\) exceeds the context \(128\)/,
    ],
    ['layer out of range', { ...ok, interventions: [iv(4, 1, direction(1))] }, 422, /layer 4 is out of range.*0\.\.3/],
    [
      'wrong size',
      { ...ok, interventions: [{ layer: 1, coeff: 1, values: new Float32Array(63), rows: 1 }] },
      422,
      /63 values, expected 1 × 64/,
    ],
    [
      'NaN',
      {
        ...ok,
        interventions: [
          iv(
            1,
            1,
            Float32Array.from({ length: H }, (_, i) => (i === 5 ? NaN : 0)),
          ),
        ],
      },
      400,
      /finite/,
    ],
    ['Infinity coeff', { ...ok, interventions: [iv(1, Infinity, direction(1))] }, 400, /coeff must be a finite number/],
    [
      'coeff × vector beyond float32',
      { ...ok, interventions: [iv(1, 1e39, direction(1))] },
      422,
      /coeff × vector reaches .*beyond float32's range/,
    ],
    ['top_p 0', { ...ok, top_p: 0 }, 400, /top_p must be in \(0, 1\]/],
    ['top_p 1.5', { ...ok, top_p: 1.5 }, 400, /top_p/],
    ['negative temperature', { ...ok, temperature: -1 }, 400, /temperature/],
    [
      'sequence longer than the prompt',
      { ...ok, interventions: [iv(0, 1, new Float32Array(4 * H))] },
      422,
      /4-row sequence needs a prompt of at least 4/,
    ],
    ['token outside the vocabulary', { ...ok, prompt: [50257] }, 400, /not an id/],
  ];
  for (const [name, req, status, msg] of bad) {
    t.throws(() => engine.generate(req), { status, message: msg }, name);
  }
  t.equal(engine.inFlight, 0, 'nothing was queued');
  await t.rejects(engine.activations({ prompt: ids(2), layers: [9] }), { status: 422, message: /layer 9/ });
});

t.test('the main thread keeps ticking while the engine works', async (t) => {
  const big = join(root, 'big');
  writeTinyCheckpoint(big, { layers: 4, embd: 256, heads: 4, ctx: 256 });
  const eng = await startEngine({ model: big });
  t.teardown(() => eng.close());
  let ticks = 0;
  let last = performance.now();
  let maxGap = 0;
  const timer = setInterval(() => {
    const n = performance.now();
    maxGap = Math.max(maxGap, n - last);
    last = n;
    ticks++;
  }, 2);
  const t0 = performance.now();
  const c = await run(eng, { prompt: ids(120), max_new_tokens: 100, temperature: 0, stop_at_eos: false });
  const total = performance.now() - t0;
  clearInterval(timer);
  t.equal(c.ids.length, 100);
  t.ok(ticks > 20, `${ticks} timer ticks during ${total.toFixed(0)} ms of generation`);
  t.ok(maxGap < total / 4, `longest event-loop stall ${maxGap.toFixed(1)} ms`);
});

t.test('an unavailable execution provider fails at start with a clear message', async (t) => {
  await t.rejects(startEngine({ model: dir, provider: 'tpu' }), {
    message: /execution provider "tpu" is not supported.*cpu/,
  });
});

t.test('recipes equal the same arithmetic done by hand on reference activations', async (t) => {
  const layer = 2;
  const lastAct = (text: string) => {
    const r = referenceForward(ref, engine.tokenizer.encode(text), undefined, { lastOnly: true });
    return r.resid[layer].at(-1)!;
  };
  const close = (got: Float32Array, want: ArrayLike<number>, what: string) => {
    let scale = 0;
    for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
    t.equal(got.length, want.length, `${what}: length`);
    t.ok(maxAbsDiff(got, want) <= 1e-4 * scale, `${what}: max error ${maxAbsDiff(got, want).toExponential(2)}`);
  };
  const norm = (v: number[]) => {
    const n = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    return v.map((x) => x / n);
  };

  const [a, b] = [lastAct('Love'), lastAct('Hate')];
  const diff = Array.from(a, (x, i) => x - b[i]);
  close((await deriveVector(engine, { kind: 'diff', layer, positive: 'Love', negative: 'Hate' })).values, diff, 'diff');
  const unit = await deriveVector(engine, { kind: 'diff', layer, positive: 'Love', negative: 'Hate', normalize: true });
  close(unit.values, norm(diff), 'diff, normalized');
  t.equal(unit.rows, 1);

  const pairs: [string, string][] = [
    ['I love you', 'I hate you'],
    ['Great job', 'Terrible job'],
    ['yes', 'no'],
  ];
  const mean = new Array(H).fill(0);
  for (const [p, n] of pairs) {
    const [x, y] = [lastAct(p), lastAct(n)];
    for (let i = 0; i < H; i++) mean[i] += (x[i] - y[i]) / pairs.length;
  }
  close((await deriveVector(engine, { kind: 'mean_diff', layer, pairs })).values, mean, 'mean_diff');

  // ActAdd: BOS + prompt, the shorter padded with spaces (id 220), per-position difference
  const pos = [50256, ...engine.tokenizer.encode('Love and kindness')];
  const neg = [50256, ...engine.tokenizer.encode('Hate')];
  while (neg.length < pos.length) neg.push(220);
  const rp = referenceForward(ref, pos, undefined, { lastOnly: true }).resid[layer];
  const rn = referenceForward(ref, neg, undefined, { lastOnly: true }).resid[layer];
  const seq = rp.flatMap((r, p) => Array.from(r, (x, i) => x - rn[p][i]));
  const act = await deriveVector(engine, { kind: 'actadd', layer, positive: 'Love and kindness', negative: 'Hate' });
  t.equal(act.rows, pos.length, 'one row per aligned position');
  close(act.values, seq, 'actadd');
  await t.rejects(deriveVector(engine, { kind: 'diff', layer, positive: '', negative: 'x' }), {
    status: 400,
    message: /positive must be a non-empty string/,
  });
  await t.rejects(deriveVector(engine, { kind: 'mean_diff', layer, pairs: [] }), {
    status: 400,
    message: /at least one pair/,
  });
});

t.test('close drains: requests in flight finish, new ones are refused', async (t) => {
  const eng = await startEngine({ model: dir });
  const pending = run(eng, { prompt: ids(5), max_new_tokens: 20, temperature: 0, stop_at_eos: false });
  await new Promise((r) => setTimeout(r, 5));
  const closed = eng.close();
  t.throws(() => eng.generate({ prompt: ids(2), max_new_tokens: 2 }), { status: 503, message: /shutting down/ });
  const c = await pending;
  t.equal(c.done.finish_reason, 'length', 'the request in flight completed');
  t.equal(c.ids.length, 20);
  await closed;
  t.equal(eng.inFlight, 0);
});

t.test('after the engine thread dies, requests fail at once and close resolves', async (t) => {
  const eng = await startEngine({ model: dir });
  t.teardown(() => eng.close());
  // Terminated while idle: terminating a thread inside an ONNX Runtime run aborts the process,
  // which is why close() waits for the thread to release its session first.
  await (eng as unknown as { thread: { terminate(): Promise<number> } }).thread.terminate();
  await new Promise((r) => setTimeout(r, 20));
  t.throws(() => eng.generate({ prompt: ids(2), max_new_tokens: 2 }), { status: 503, message: /stopped/ });
  await t.rejects(eng.activations({ prompt: ids(2), layers: [0] }), { status: 503, message: /stopped/ });
  t.equal(eng.ready, false);
  await eng.close();
  t.pass('close resolved');
});
