import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import t, { type Test } from 'tap';
import { Rng, type TinyOptions, writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { buildGraph } from '../src/model/graph.ts';
import {
  at,
  type Dims,
  leftPad,
  maxAbsDiff,
  noCache,
  range,
  rightPad,
  runGraph,
  runServe,
  type ServeGroup,
} from './helpers/graph-run.ts';
import { loadReference, type RefModel, type RefSteer, referenceForward } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-graph-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

interface Fixture {
  dir: string;
  ref: RefModel;
  dims: Dims;
  session: ort.InferenceSession;
}

async function fixture(name: string, opts: TinyOptions): Promise<Fixture> {
  const dir = join(root, name);
  writeTinyCheckpoint(dir, opts);
  const { file } = buildGraph(dir);
  const ref = loadReference(dir);
  const session = await ort.InferenceSession.create(file);
  return { dir, ref, session, dims: { nLayer: ref.nLayer, nHead: ref.nHead, nEmbd: ref.nEmbd, vocab: ref.vocab } };
}

const rng = new Rng(42);
const randomIds = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50257));
const randomVec = (H: number, scale: number) => Float64Array.from({ length: H }, () => scale * rng.normal());

/** Compares ORT's logits and every resid.{l} for row b against the reference (positions [from, from+n)). */
function expectMatch(
  tt: Test,
  out: ort.InferenceSession.ReturnType,
  ref: Pick<ReturnType<typeof referenceForward>, 'logits' | 'resid'>,
  b: number,
  offset: number,
  what: string,
) {
  const n = ref.logits.length;
  const tol = 1e-4 * range(ref.logits);
  let worst = 0;
  for (let p = 0; p < n; p++) worst = Math.max(worst, maxAbsDiff(at(out.logits, b, offset + p), ref.logits[p]));
  tt.ok(worst <= tol, `${what}: logits max abs error ${worst.toExponential(2)} <= ${tol.toExponential(2)}`);
  for (let l = 0; l < ref.resid.length; l++) {
    const rtol = 1e-4 * range(ref.resid[l]);
    let w = 0;
    for (let p = 0; p < n; p++) w = Math.max(w, maxAbsDiff(at(out[`resid.${l}`], b, offset + p), ref.resid[l][p]));
    tt.ok(w <= rtol, `${what}: resid.${l} max abs error ${w.toExponential(2)} <= ${rtol.toExponential(2)}`);
  }
}

const single = (ids: number[]) => ({ ids: [ids], mask: [ids.map(() => 1)], pos: [ids.map((_, i) => i)] });

t.test('graph matches the float64 reference', async (t) => {
  const fixtures = {
    hub: await fixture('hub', { layers: 3, embd: 64, heads: 4, ctx: 64, seed: 1, initScale: 10 }),
    // save_pretrained layout: prefixed keys, an untied lm_head, stale causal-mask buffers
    saved: await fixture('saved', {
      layers: 2,
      embd: 48,
      heads: 3,
      ctx: 32,
      seed: 2,
      prefix: 'transformer.',
      lmHead: 'random',
      maskBuffers: true,
      initScale: 10,
    }),
  };
  for (const [name, f] of Object.entries(fixtures)) {
    const H = f.dims.nEmbd;
    const L = f.dims.nLayer;
    const ids = randomIds(9);
    const plain = referenceForward(f.ref, ids);

    await t.test(`${name}: unsteered logits and resid.0..${L}`, async (t) => {
      expectMatch(t, await runGraph(f.session, f.dims, single(ids)), plain, 0, 0, 'unsteered');
    });

    await t.test(`${name}: a direction at all positions at layer 1 and at layer n_layer`, async (t) => {
      const d1 = randomVec(H, 0.2);
      const dL = randomVec(H, 0.5);
      const steer: RefSteer = (l) => (l === 1 ? d1 : l === L ? dL : undefined);
      const ref = referenceForward(f.ref, ids, steer);
      expectMatch(t, await runGraph(f.session, f.dims, { ...single(ids), steer: [steer] }), ref, 0, 0, 'steered');
      const moved = maxAbsDiff(ref.logits[8], plain.logits[8]);
      t.ok(moved > 100 * 1e-4 * range(plain.logits), `steering moves the logits (${moved.toExponential(2)})`);
    });

    await t.test(`${name}: a [k, H] sequence on the first k positions`, async (t) => {
      const k = 3;
      const seq = Array.from({ length: k }, () => randomVec(H, 0.3));
      const steer: RefSteer = (l, p) => (l === 1 && p < k ? seq[p] : undefined);
      const ref = referenceForward(f.ref, ids, steer);
      const out = await runGraph(f.session, f.dims, { ...single(ids), steer: [steer] });
      expectMatch(t, out, ref, 0, 0, 'front sequence');
      // The hook itself changes only the first k positions; later blocks carry it forward by attention.
      t.ok(maxAbsDiff(at(out['resid.1'], 0, k), plain.resid[1][k]) < 1e-5, 'resid.1 after position k is untouched');
      t.ok(
        maxAbsDiff(at(out['resid.2'], 0, k), plain.resid[2][k]) > 1e-4,
        'resid.2 after position k sees the steered prefix',
      );
    });
  }

  await t.test('incremental decoding through past/present equals a full recompute', async (t) => {
    const f = fixtures.hub;
    const d = randomVec(f.dims.nEmbd, 0.2);
    const steer: RefSteer = (l) => (l === 2 ? d : undefined);
    const ids = randomIds(6);
    let out = await runGraph(f.session, f.dims, { ...single(ids), steer: [steer] });
    for (let step = 0; step < 4; step++) {
      const next = randomIds(1)[0];
      const past = Object.fromEntries(Object.entries(out).filter(([k]) => k.startsWith('present.')));
      const P = ids.length;
      ids.push(next);
      out = await runGraph(f.session, f.dims, {
        ids: [[next]],
        mask: [ids.map(() => 1)],
        pos: [[P]],
        past,
        steer: [steer],
      });
      t.same(
        out['present.0.key'].dims,
        [1, f.dims.nHead, ids.length, f.dims.nEmbd / f.dims.nHead],
        'cache grows by one',
      );
      const ref = referenceForward(f.ref, ids, steer);
      const last = { logits: [ref.logits.at(-1)!], resid: ref.resid.map((r) => [r.at(-1)!]) };
      expectMatch(t, out, last, 0, 0, `decode step ${step + 1}`);
      const lastLogits = out.last_logits.data as Float32Array;
      t.ok(maxAbsDiff(lastLogits, ref.logits.at(-1)!) <= 1e-4 * range(ref.logits), 'last_logits is the last position');
    }
  });

  await t.test('left-padded batch rows equal their single-row results; steering stays in its row', async (t) => {
    const f = fixtures.hub;
    const H = f.dims.nEmbd;
    const d = randomVec(H, 0.3);
    const seq = [randomVec(H, 0.3), randomVec(H, 0.3)];
    const rows = [randomIds(8), randomIds(3), randomIds(5), randomIds(1)];
    const steers: (RefSteer | undefined)[] = [
      (l) => (l === 2 ? d : undefined),
      undefined,
      (l, p) => (l === 0 && p < 2 ? seq[p] : undefined),
      (l) => (l === f.dims.nLayer ? d : undefined),
    ];
    const padded = leftPad(rows);
    const out = await runGraph(f.session, f.dims, { ...padded, steer: steers });
    for (const [b, ids] of rows.entries()) {
      const ref = referenceForward(f.ref, ids, steers[b]);
      expectMatch(t, out, ref, b, padded.T - ids.length, `row ${b} (length ${ids.length})`);
    }
    // one decode step for the whole batch: masks grow by one real token per row
    const next = randomIds(rows.length);
    const past = Object.fromEntries(Object.entries(out).filter(([k]) => k.startsWith('present.')));
    const step = await runGraph(f.session, f.dims, {
      ids: next.map((n) => [n]),
      mask: padded.mask.map((m) => [...m, 1]),
      pos: rows.map((r) => [r.length]),
      past,
      steer: steers,
    });
    for (const [b, ids] of rows.entries()) {
      const ref = referenceForward(f.ref, [...ids, next[b]], steers[b]);
      const got = (step.last_logits.data as Float32Array).subarray(b * f.dims.vocab, (b + 1) * f.dims.vocab);
      const err = maxAbsDiff(got, ref.logits.at(-1)!);
      t.ok(err <= 1e-4 * range(ref.logits), `row ${b} decode step: error ${err.toExponential(2)}`);
    }
  });

  await t.test('serving variant: right-padded prompts, then a decode step with rows in two cache groups', async (t) => {
    const f = fixtures.hub;
    const { nHead: nh, nEmbd: H, nLayer: L, vocab: V } = f.dims;
    const hd = H / nh;
    const { file } = buildGraph(f.dir, { serving: { groups: 2 }, fileName: 'serve.onnx' });
    const serve = await ort.InferenceSession.create(file);
    const d = randomVec(H, 0.3);
    const rows = [randomIds(7), randomIds(4), randomIds(5)];
    const steers: (RefSteer | undefined)[] = [undefined, (l) => (l === 1 ? d : undefined), undefined];
    const refs = rows.map((r, b) => referenceForward(f.ref, r, steers[b]));
    const T = 16; // padded well past the longest row
    const prompt = { ...rightPad(rows, T), pastLen: [0, 0, 0], groups: [noCache(3), noCache()], steer: steers };
    const out = await runServe(serve, f.dims, { ...prompt, logitsAll: true });
    const last = out.last_logits.data as Float32Array;
    for (const [b, ref] of refs.entries()) {
      const err = maxAbsDiff(last.subarray(b * V, (b + 1) * V), ref.logits.at(-1)!);
      t.ok(err <= 1e-4 * range(ref.logits), `row ${b}: last_logits at its last real token (${err.toExponential(2)})`);
      let worst = 0;
      for (let p = 0; p < rows[b].length; p++) worst = Math.max(worst, maxAbsDiff(at(out.logits, b, p), ref.logits[p]));
      t.ok(worst <= 1e-4 * range(ref.logits), `row ${b}: logits_all gives every position (${worst.toExponential(2)})`);
    }
    const lse = refs.map((r) => {
      const row = r.logits.at(-1)!;
      const m = Math.max(...row);
      return m + Math.log(row.reduce((a, x) => a + Math.exp(x - m), 0));
    });
    const lseErr = maxAbsDiff(out.last_lse.data as Float32Array, Float32Array.from(lse));
    t.ok(
      lseErr < 1e-4 * Math.max(...lse.map(Math.abs)),
      `last_lse: log-sum-exp of each row (${lseErr.toExponential(2)})`,
    );
    const lastOnly = await runServe(serve, f.dims, prompt, ['logits', 'last_logits']);
    t.same(lastOnly.logits.dims, [3, 0, V], 'logits_all false: no position projected');
    t.equal(maxAbsDiff(lastOnly.last_logits.data as Float32Array, last), 0, 'and the same last_logits');

    // new.* hold each row's keys and values: against the contract graph's present.*
    const contract = await runGraph(f.session, f.dims, single(rows[0]));
    for (const kv of ['key', 'value']) {
      const fresh = out[`new.1.${kv}`].data as Float32Array; // [3, nh, T, hd]
      const present = contract[`present.1.${kv}`].data as Float32Array; // [1, nh, 7, hd]
      const mine = new Float32Array(nh * 7 * hd);
      for (let h = 0; h < nh; h++) mine.set(fresh.subarray(h * T * hd, (h * T + 7) * hd), h * 7 * hd);
      const err = maxAbsDiff(mine, present);
      t.ok(err <= 1e-5 * range([present]), `new.1.${kv} = present.1.${kv} (${err.toExponential(2)})`);
    }

    // decode: row 1 alone in group 0 (8 slots), rows 0 and 2 in group 1 (32 slots, tail unused)
    const cache = (members: number[], P: number) => {
      const g: ServeGroup = { rows: members.length, P, k: [], v: [] };
      for (let l = 0; l < L; l++) {
        for (const kv of ['key', 'value'] as const) {
          const fresh = out[`new.${l}.${kv}`].data as Float32Array;
          const a = new Float32Array(members.length * nh * P * hd).fill(1e3); // unused slots: never attended
          for (const [r, b] of members.entries())
            for (let h = 0; h < nh; h++)
              a.set(
                fresh.subarray((b * nh + h) * T * hd, ((b * nh + h) * T + rows[b].length) * hd),
                (r * nh + h) * P * hd,
              );
          (kv === 'key' ? g.k : g.v).push(a);
        }
      }
      return g;
    };
    const order = [1, 0, 2];
    const next = randomIds(3);
    const step = await runServe(serve, f.dims, {
      ids: order.map((b) => [next[b]]),
      pos: order.map((b) => [rows[b].length]),
      newLen: [1, 1, 1],
      pastLen: order.map((b) => rows[b].length),
      groups: [cache([1], 8), cache([0, 2], 32)],
      steer: order.map((b) => steers[b]),
    });
    for (const [r, b] of order.entries()) {
      const ref = referenceForward(f.ref, [...rows[b], next[b]], steers[b]);
      const err = maxAbsDiff((step.last_logits.data as Float32Array).subarray(r * V, (r + 1) * V), ref.logits.at(-1)!);
      t.ok(err <= 1e-4 * range(ref.logits), `decode, row ${b} in group ${r ? 1 : 0}: error ${err.toExponential(2)}`);
    }
    t.notOk('present.0.key' in step, 'no present.* in the serving graph');
    await serve.release();
  });

  for (const f of Object.values(fixtures)) await f.session.release();
});

t.test('weights stay in model.safetensors; rebuilds follow the layout, not the values', async (t) => {
  const dir = join(root, 'zero-copy');
  writeTinyCheckpoint(dir, { layers: 1, embd: 32, heads: 2, ctx: 16, seed: 5 });
  const first = buildGraph(dir);
  t.ok(first.built, 'first build writes the graph');
  const graphBytes = statSync(first.file).size;
  t.ok(
    graphBytes * 50 < first.checkpoint.paramBytes,
    `graph file (${graphBytes} B) holds no weights (${first.checkpoint.paramBytes} B)`,
  );
  const mtime = statSync(first.file).mtimeMs;
  t.notOk(buildGraph(dir).built, 'second build is a no-op');
  t.equal(statSync(first.file).mtimeMs, mtime, 'graph file untouched');

  // New values, same layout: the graph is still valid and reads the new weights in place.
  writeTinyCheckpoint(dir, { layers: 1, embd: 32, heads: 2, ctx: 16, seed: 6 });
  t.notOk(buildGraph(dir).built, 'same layout: no rebuild');
  const ref = loadReference(dir);
  const s = await ort.InferenceSession.create(first.file);
  const ids = randomIds(5);
  const out = await runGraph(s, { nLayer: 1, nHead: 2, nEmbd: 32, vocab: 50257 }, single(ids));
  const expected = referenceForward(ref, ids);
  t.ok(
    maxAbsDiff(at(out.logits, 0, 4), expected.logits[4]) <= 1e-4 * range(expected.logits),
    'logits follow the new weights',
  );
  await s.release();

  // A config change (epsilon) changes the graph: rebuilt.
  const cfgFile = join(dir, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgFile, 'utf8'));
  writeFileSync(cfgFile, JSON.stringify({ ...cfg, layer_norm_epsilon: 1e-6 }));
  t.ok(buildGraph(dir).built, 'config change: rebuilt');
  t.ok(buildGraph(dir, { force: true }).built, 'force rebuilds');
});
