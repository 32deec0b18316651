/**
 * The capi binding (src/engine/runtime/capi.ts: ONNX Runtime's C API through I/O binding, the KV
 * cache kept as OrtValues) on the CPU provider, against the onnxruntime-node binding on the same
 * requests: the same tokens and logprobs to the last bit (a batch of several, chunked prompts,
 * steering, prompt logprobs, activations); ORT's errors (a wrong shape, a missing input, a provider
 * that cannot load) as typed errors, after which the process still runs passes; and every OrtValue
 * given back (the live count returns to zero after requests, a cancellation and a failed pass).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import type { ForwardInput } from '../src/engine/pass.ts';
import { ModelRunner } from '../src/engine/runner.ts';
import { capi, deviceCopy, hostCopy, liveValues, type OrtValueTensor } from '../src/engine/runtime/capi.ts';
import { check, cudaMemory, loadOrt } from '../src/engine/runtime/capi-ffi.ts';
import type { Tensor } from '../src/engine/runtime/runtime.ts';
import { Scheduler } from '../src/engine/scheduler.ts';
import type { GenerateRequest, Intervention } from '../src/engine/types.ts';
import { OrtError, SteerdError } from '../src/errors.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { steerName } from '../src/model/hooks.ts';
import { buildKvGraphBytes } from '../src/model/kv-graph.ts';
import { Rng } from '../src/util/rng.ts';
import { collect, run } from './helpers/engine-util.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-capi-'));
const dir = join(root, 'm');
const [L, H] = [3, 64];
writeTinyCheckpoint(dir, { layers: L, embd: H, heads: 4, ctx: 128, seed: 17, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

// the same engine through each binding: small batches and a small prefill budget (chunked prompts)
const opts: EngineOptions = { model: dir, provider: 'cpu', threads: 1, batchCapacity: 8, tokenBudget: 16 };
const node = await Engine.start({ ...opts, runtime: 'node' });
const dev = await Engine.start({ ...opts, runtime: 'capi' });
t.teardown(async () => {
  await node.close();
  await dev.close();
});

const rng = new Rng(5);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const direction = (scale: number) => Float32Array.from({ length: H }, () => scale * rng.normal());
const iv = (layer: number, coeff: number, values: Float32Array, positions?: Intervention['positions']) => ({
  layer,
  coeff,
  values,
  rows: values.length / H,
  positions,
});

/** The engine thread's live OrtValues once its reports settle (the last one follows the last step). */
async function settledLive(e: Engine): Promise<number | undefined> {
  let last = e.kvUsage.hostBytes.live;
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 20));
    if (e.kvUsage.hostBytes.live === 0) return 0;
    last = e.kvUsage.hostBytes.live;
  }
  return last;
}

t.test('/v1/model facts: the binding and where its cache lives', async (t) => {
  t.equal(node.info.binding, 'node');
  t.equal(node.info.kv_cache?.location, 'host');
  t.equal(dev.info.binding, 'capi');
  t.equal(dev.info.kv_cache?.location, 'device', 'capi keeps the cache on the device on the CPU provider too');
});

t.test('tokens and logprobs bit-identical to onnxruntime-node: a batch of several, chunked, steered', async (t) => {
  const reqs: GenerateRequest[] = [
    { prompt: ids(5), max_new_tokens: 12, temperature: 0, stop_at_eos: false },
    // 40 tokens with a budget of 16: prefilled in three chunks, beside the others' decoding
    { prompt: ids(40), max_new_tokens: 8, temperature: 0, stop_at_eos: false },
    {
      prompt: ids(9),
      max_new_tokens: 10,
      temperature: 0,
      stop_at_eos: false,
      interventions: [iv(1, 4, direction(0.2)), iv(2, -3, direction(0.2), 'generated')],
    },
    { prompt: ids(23), max_new_tokens: 10, temperature: 0.9, seed: 7, stop_at_eos: false, top_logprobs: 3 },
    {
      prompt: ids(12),
      max_new_tokens: 6,
      temperature: 0,
      stop_at_eos: false,
      interventions: [
        iv(
          0,
          1,
          Float32Array.from({ length: 3 * H }, () => 0.4 * rng.normal()),
        ),
      ],
    },
    { prompt: ids(3), max_new_tokens: 14, temperature: 0.7, seed: 3, stop_at_eos: false, prompt_logprobs: 2 },
  ];
  const all = (e: Engine) =>
    Promise.all(
      reqs.map(async (r) => {
        const events: unknown[] = [];
        const c = await collect(e.generate(r), undefined, (ev) => events.push(ev));
        return { ids: c.ids, logprobs: c.logprobs, events };
      }),
    );
  const [want, got] = [await all(node), await all(dev)];
  for (const [i, w] of want.entries()) {
    t.ok(w.ids.length > 0, `request ${i}: ${w.ids.length} tokens`);
    t.same(got[i].ids, w.ids, `request ${i}: the same tokens`);
    t.same(got[i].logprobs, w.logprobs, `request ${i}: the same logprobs, bit for bit`);
    t.same(got[i].events, w.events, `request ${i}: the same token events (top logprobs, prompt logprobs)`);
  }
  t.equal(await settledLive(dev), 0, 'every OrtValue given back once the requests are done');
});

t.test('activations and the logit lens bit-identical to onnxruntime-node (reads come back through capi)', async (t) => {
  const req = {
    prompt: ids(11),
    layers: [0, 2, 3],
    interventions: [iv(1, 2, direction(0.3))],
    lens: Float32Array.from({ length: 2 * H }, () => rng.normal()),
  };
  const [w, g] = [await node.activations(req), await dev.activations(req)];
  for (const l of req.layers) t.same(g.activations[l], w.activations[l], `layer ${l}: the same bits`);
  t.same(g.lens, w.lens, 'the lens logits: the same bits');
  t.equal(await settledLive(dev), 0, 'every OrtValue given back');
});

t.test('a cancelled generation gives its OrtValues back', async (t) => {
  const ac = new AbortController();
  const r = { prompt: ids(20), max_new_tokens: 60, temperature: 0, stop_at_eos: false };
  const other = run(dev, { ...r, prompt: ids(7), max_new_tokens: 20 });
  const cancelled = await collect(dev.generate(r, { signal: ac.signal }), (n) => n === 4 && ac.abort());
  t.ok(cancelled.ids.length < 60, `stopped after ${cancelled.ids.length} tokens`);
  t.equal((await other).ids.length, 20, 'its neighbour finished');
  t.equal(await settledLive(dev), 0, 'every OrtValue given back');
});

t.test('ORT errors are typed errors, and the binding runs on after them', async (t) => {
  const [nLayer, nHead, hd] = [1, 2, 4];
  const session = await capi.open(buildKvGraphBytes(nLayer, nHead, hd), {
    provider: 'cpu',
    threads: 1,
    spinning: false,
    deviceOutputs: 'all',
  });
  t.teardown(() => session.release());
  const plan = (rows: number) => ({
    rows: capi.int64(new Array(rows).fill(0)),
    keep: capi.int64(new Array(rows).fill(0)),
    src: capi.int64(new Array(rows).fill(0)),
    from: capi.int64(new Array(rows).fill(0)),
    count: capi.int64(new Array(rows).fill(1)),
    slots: capi.int64([16]),
  });
  const block = (rows: number, slots: number, dims = [rows, nHead, slots, hd]) =>
    capi.float32(
      Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => i),
      dims,
    );
  const feeds = (b: Tensor, rows = 2): Record<string, Tensor> => ({
    ...plan(rows),
    's.0.key': b,
    's.0.value': b,
    'f.0.key': b,
    'f.0.value': b,
  });
  const before = liveValues();

  const good = await session.run(feeds(block(2, 4)));
  const out = good['o.0.key'];
  t.equal(out.location, 'ort-value', 'outputs stay in the binding (deviceOutputs: all)');
  t.same(out.dims, [2, nHead, 16, hd], 'their shape is known');
  t.equal(liveValues(), before + 2, 'two outputs held');
  // read back (CPU memory): each row's slot 0 is the first token of row `src` = 0, the rest zeros
  const k = hostCopy(out as OrtValueTensor).data as Float32Array;
  let wrong = 0;
  for (let r = 0; r < 2; r++)
    for (let h = 0; h < nHead; h++)
      for (let p = 0; p < 16; p++)
        for (let i = 0; i < hd; i++) {
          const want = p === 0 ? (h * 4 + 0) * hd + i : 0; // block(): the value is its index in [2, nHead, 4, hd]
          if (!Object.is(k[((r * nHead + h) * 16 + p) * hd + i], want)) wrong++;
        }
  t.equal(wrong, 0, 'the update graph wrote what the plan says, read back through the C API');
  // the same block fed as a device tensor: the same bits as fed from the host
  const dev = deviceCopy(block(2, 4));
  const viaDevice = await session.run(feeds(dev));
  t.same(hostCopy(viaDevice['o.0.key'] as OrtValueTensor).data, k, 'a device input computes what a host input does');
  for (const x of [dev, ...Object.values(viaDevice)]) if (x.location !== 'cpu') x.dispose();
  t.equal(liveValues(), before + 2, 'the device input and its outputs given back');

  // a device tensor fed back as an input: no copy through JS
  const again = await session.run({
    ...plan(2),
    's.0.key': out,
    's.0.value': good['o.0.value'],
    'f.0.key': out,
    'f.0.value': good['o.0.value'],
  });
  t.same(again['o.0.key'].dims, [2, nHead, 16, hd], 'a device output fed back as an input');
  for (const x of [...Object.values(good), ...Object.values(again)]) if (x.location !== 'cpu') x.dispose();
  t.equal(liveValues(), before, 'disposed: the count is back');

  const wrongShape = await session.run(feeds(block(2, 4, [2, nHead + 1, 4, hd]))).catch((e) => e);
  t.ok(wrongShape instanceof OrtError, 'a wrong shape: an OrtError');
  t.ok(wrongShape instanceof SteerdError && wrongShape.status === 500, 'typed, with its HTTP status');
  t.match(wrongShape.message, /RunWithBinding/, `it names the call: ${wrongShape.message.split('\n')[0]}`);
  t.equal(liveValues(), before, 'a failed run gives back its inputs');

  const missing = feeds(block(2, 4));
  delete missing['f.0.value'];
  const noInput = await session.run(missing).catch((e) => e);
  t.ok(noInput instanceof OrtError, 'a missing input: an OrtError');
  t.match(noInput.message, /f\.0\.value/, `it names the input: ${noInput.message.split('\n')[0]}`);
  t.equal(liveValues(), before, 'nothing held after it');

  // an output asked for twice would be bound once and come back once: refused before anything runs
  const twice = await session.run(feeds(block(2, 4)), ['o.0.key', 'o.0.key']).catch((e) => e);
  t.ok(twice instanceof OrtError, 'an output asked for twice: an OrtError, not a crash');
  t.match(twice.message, /asked for twice/);
  const badDims = await session
    .run({
      ...feeds(block(2, 4)),
      'f.0.value': { location: 'cpu', type: 'float32', data: new Float32Array(0), dims: [0.5] },
    })
    .catch((e) => e);
  t.ok(badDims instanceof OrtError, 'dims that are not sizes: an OrtError');
  t.equal(liveValues(), before, 'nothing held after them');

  const spent = await session.run(feeds(block(2, 4)));
  for (const x of Object.values(spent)) if (x.location !== 'cpu') x.dispose();
  const disposed = spent['o.0.key'];
  const stale = await session.run(feeds(disposed)).catch((e) => e);
  t.ok(stale instanceof OrtError, 'a disposed device tensor fed again: an OrtError, not a dangling pointer');

  // whether or not the library lists CUDA, this machine has no CUDA provider libraries to load
  const cuda = await capi
    .open(buildKvGraphBytes(nLayer, nHead, hd), { provider: 'cuda', threads: 1, spinning: false })
    .then(
      async (s) => {
        await s.release();
        return undefined;
      },
      (e) => e,
    );
  if (cuda === undefined) t.pass('the CUDA provider loaded here (a GPU machine)');
  else {
    t.ok(cuda instanceof OrtError, `a provider that cannot load: an OrtError (${String(cuda.message).split('\n')[0]})`);
  }

  const after = await session.run(feeds(block(2, 4)));
  t.equal(after['o.0.key'].dims[0], 2, 'the binding still runs passes after every error');
  for (const x of Object.values(after)) if (x.location !== 'cpu') x.dispose();
  t.equal(liveValues(), before, 'every value given back');
});

t.test("the CUDA memory info is made without a GPU: CreateMemoryInfo's index checked here", async (t) => {
  const ort = loadOrt();
  t.match(ort.version, /^1\.\d+\.\d+/, `ONNX Runtime ${ort.version}`);
  const info = cudaMemory(ort, 0);
  const name: unknown[] = [null];
  check(ort.api, ort.api.MemoryInfoGetName(info, name), 'MemoryInfoGetName');
  t.equal(name[0], 'Cuda', 'BindOutputToDevice would bind to CUDA memory');
  ort.api.ReleaseMemoryInfo(info);
});

t.test('an engine whose provider cannot load fails at start with a clear message; the process lives', async (t) => {
  if (capi.providers().includes('cuda')) {
    const e = await Engine.start({ ...opts, provider: 'cuda', runtime: 'capi' }).then(
      async (x) => {
        await x.close();
        return undefined;
      },
      (err) => err,
    );
    if (e === undefined) return t.pass('CUDA started: a GPU machine');
    t.ok(e instanceof SteerdError, 'typed');
    t.equal(e.code, 'provider_unavailable');
    t.match(e.message, /cannot start the cuda execution provider: ONNX Runtime/);
  } else {
    await t.rejects(Engine.start({ ...opts, provider: 'cuda', runtime: 'capi' }), { code: 'provider_unavailable' });
  }
  await t.rejects(Engine.start({ ...opts, provider: 'webgpu', runtime: 'capi' }), {
    message: /execution provider "webgpu" is not supported by capi/,
  });
  t.equal((await run(dev, { prompt: ids(4), max_new_tokens: 3, temperature: 0 })).ids.length > 0, true, 'serving on');
});

t.test('a failed pass gives back every OrtValue it made (the scheduler on the capi runner)', async (t) => {
  const runner = await ModelRunner.open({ model: dir, provider: 'cpu', threads: 1, runtime: 'capi' });
  t.teardown(() => runner.close());
  const before = liveValues();
  // the runner as the scheduler's pass; `fail` makes its next pass carry a steering input whose
  // data does not fill its dims: refused by the binding after the pass's first inputs were made
  let fail = false;
  const { site, layer } = runner.hooks[0];
  const forward = runner.forward.bind(runner);
  runner.forward = (inp: ForwardInput) =>
    forward(
      fail
        ? { ...inp, steer: { add: new Map([[steerName(site, layer), new Float32Array(3)]]), proj: new Map() } }
        : inp,
    );
  const tokens = new Map<number, number[]>();
  const errors: unknown[] = [];
  const scheduler = new Scheduler(
    runner,
    {
      event: (id, e) => {
        if (e.type === 'token') tokens.set(id, [...(tokens.get(id) ?? []), e.id]);
      },
      activations: () => undefined,
      error: (_, e) => errors.push(e),
    },
    { batchCapacity: 4, tokenBudget: 16 },
  );
  const r = (n: number) => ({ prompt: ids(n), max_new_tokens: 8, temperature: 0, stop_at_eos: false });
  scheduler.submit(1, r(20));
  scheduler.submit(2, r(5));
  for (let i = 0; i < 4; i++) await scheduler.step();
  t.ok(liveValues() > before, `the cache on the device mid-generation (${liveValues() - before} OrtValues)`);
  fail = true;
  const failed = await scheduler.step().catch((e) => e);
  t.ok(failed instanceof OrtError, `the step failed with an OrtError (${String(failed?.message)})`);
  fail = false;
  scheduler.reset();
  t.equal(liveValues(), before, 'after the reset every OrtValue is given back');
  scheduler.submit(3, r(7));
  while (await scheduler.step());
  t.equal(tokens.get(3)?.length, 8, 'the next request runs');
  t.equal(liveValues(), before, 'and gives back its own');
  scheduler.close();
});
