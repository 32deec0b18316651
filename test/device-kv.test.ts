/**
 * The device-resident KV cache (kv/device-store.ts, run by kv/updater.ts: the cache update graph, kv-graph.ts) against the
 * host store (kv/host-store.ts), the same edits on both: rows joining from several sources, growing token by
 * token, leaving, zeroed, the slot count doubling and halving. The update graph runs here on the CPU
 * provider, whose tensors can be read back (WebGPU's cannot be from Node: slow/webgpu.test.ts checks the
 * device path through the model's outputs): through onnxruntime-node, or with STEERD_TEST_BINDING=capi
 * through the capi binding, whose device tensors are OrtValues it keeps (read back here through the
 * C API, and counted: every one given back).
 */
import ort from 'onnxruntime-node';
import t, { type Test } from 'tap';
import { DeviceKvStore, type KvUpdater } from '../src/engine/kv/device-store.ts';
import { HostKvStore } from '../src/engine/kv/host-store.ts';
import type { DeviceTensor, KvShape } from '../src/engine/kv/store.ts';
import { kvUpdater } from '../src/engine/kv/updater.ts';
import { capi, deviceCopy, hostCopy, liveValues, OrtValueTensor } from '../src/engine/runtime/capi.ts';
import { wrapSession } from '../src/engine/runtime/ort-node.ts';
import type { GraphSession } from '../src/engine/runtime/runtime.ts';
import { buildKvGraphBytes } from '../src/model/kv-graph.ts';
import { Rng } from '../src/util/rng.ts';
import { binding } from './helpers/provider.ts';

const shape: KvShape = { nLayer: 2, nHead: 3, headDim: 4 };
const { nLayer, nHead, headDim: hd } = shape;
const viaCapi = binding === 'capi';
const graph = buildKvGraphBytes(nLayer, nHead, hd);
const session: GraphSession = viaCapi
  ? await capi.open(graph, { provider: 'cpu', threads: 1, spinning: false, deviceOutputs: 'all' })
  : wrapSession(await ort.InferenceSession.create(graph));
t.teardown(() => session.release());
const liveBefore = liveValues();

let runs = 0;
let live = 0;
/** A tensor of the binding's standing in for a device one (the store only feeds and disposes it); `live` counts those not given back. */
const track = (x: DeviceTensor): DeviceTensor => {
  live++;
  let gone = false;
  // an OrtValue is released (onnxruntime-node's CPU tensors hold nothing to give back)
  const give = x instanceof OrtValueTensor ? x.dispose.bind(x) : () => {};
  const tracked = x as { dispose(): void };
  tracked.dispose = () => {
    if (gone) throw new Error('disposed twice');
    gone = true;
    live--;
    give();
  };
  return x;
};
const dataOf = (x: DeviceTensor) =>
  (x instanceof OrtValueTensor ? hostCopy(x).data : (x as unknown as ort.Tensor).data) as Float32Array;
/** A device tensor of the binding holding `data`. */
const device = (data: Float32Array, dims: number[]): DeviceTensor =>
  viaCapi ? deviceCopy(capi.float32(data, dims)) : (new ort.Tensor('float32', data, dims) as unknown as DeviceTensor);
/** The runner's updater (kv/updater.ts) on the CPU provider, its outputs tracked. */
const inner = kvUpdater(session, shape, () => undefined);
const updater: KvUpdater = {
  async update(s, f, plan, slots) {
    runs++;
    const kv = await inner.update(s, f, plan, slots);
    return { k: kv.k.map(track), v: kv.v.map(track) };
  },
};

/** Random tokens of B rows × S slots: the same numbers as host arrays and as stand-in device tensors. */
function block(rng: Rng, B: number, S: number) {
  const k = Array.from({ length: nLayer }, () => Float32Array.from({ length: B * nHead * S * hd }, () => rng.normal()));
  const v = Array.from({ length: nLayer }, () => Float32Array.from({ length: B * nHead * S * hd }, () => rng.normal()));
  const dev = (a: Float32Array[]) => a.map((x) => track(device(x, [B, nHead, S, hd])));
  return { host: { k, v }, device: { k: dev(k), v: dev(v) }, B, S };
}

/** Every row's slots on both stores: the tokens equal, and zeros after them on the device. */
async function same(t: Test, host: HostKvStore, dev: DeviceKvStore, what: string) {
  const past = await dev.past();
  t.same(dev.len, host.len, `${what}: lengths`);
  let bad = 0;
  for (let l = 0; l < nLayer; l++) {
    for (const kind of ['k', 'v'] as const) {
      const d = dataOf(past[kind][l] as DeviceTensor);
      const h = host[kind][l];
      for (let r = 0; r < host.n; r++)
        for (let x = 0; x < nHead; x++)
          for (let p = 0; p < past.P; p++)
            for (let i = 0; i < hd; i++) {
              const got = d[((r * nHead + x) * past.P + p) * hd + i];
              const want = p < host.len[r] ? h[((r * nHead + x) * host.P + p) * hd + i] : 0;
              if (!Object.is(got, want)) bad++;
            }
    }
  }
  t.equal(bad, 0, `${what}: every slot`);
  t.equal(past.rows, host.n, `${what}: rows`);
  t.ok(past.P >= Math.max(0, ...host.len), `${what}: room for every row (P ${past.P})`);
}

t.test('the device store makes the host store’s cache, edit for edit', async (t) => {
  const rng = new Rng(3);
  const host = new HostKvStore(shape, 8, 128);
  const dev = new DeviceKvStore(shape, updater, 8, 128);
  // a prefill pass of three prompts (padded to 24) joins: one update
  const pre = block(rng, 3, 24);
  const lens = [5, 24, 17];
  for (const [b, count] of lens.entries()) {
    host.push({ ...pre.host, S: 24, b, from: 0, count });
    dev.push({ ...pre.device, S: 24, b, from: 0, count });
  }
  runs = 0;
  await same(t, host, dev, 'joined');
  t.equal(runs, 1, 'one update for three rows from one pass');
  // decode steps: one token per row from each pass's new keys and values
  for (let step = 0; step < 12; step++) {
    const fresh = block(rng, host.n, 1);
    host.reserve(Math.max(...host.len) + 1);
    dev.reserve(Math.max(...dev.len) + 1);
    for (let r = 0; r < host.n; r++) {
      host.append(r, { ...fresh.host, S: 1, b: r, from: 0, count: 1 });
      dev.append(r, { ...fresh.device, S: 1, b: r, from: 0, count: 1 });
    }
    runs = 0;
    await dev.flush();
    t.equal(runs, 1, `step ${step}: one update`);
    if (step === 3) {
      // a row leaves (the last moves into its place), another is zeroed (an aborted row), a long
      // prompt's cache joins from a second store while a fresh prompt joins from a pass: two sources
      t.equal(dev.remove(0), host.remove(0), 'the same row moves');
      host.zero(1);
      dev.zero(1);
      const other = new HostKvStore(shape, 1, 128);
      const src = block(rng, 1, 40);
      other.push({ ...src.host, S: 40, b: 0, from: 0, count: 33 });
      host.push(other.source(0));
      dev.push({ ...src.device, S: 40, b: 0, from: 0, count: 33 });
      const pass = block(rng, 2, 16);
      host.push({ ...pass.host, S: 16, b: 1, from: 3, count: 9 });
      dev.push({ ...pass.device, S: 16, b: 1, from: 3, count: 9 });
      runs = 0;
      await same(t, host, dev, 'rows left and joined');
      t.equal(runs, 2, 'one update per source');
      for (const b of [src, pass]) for (const x of [...b.device.k, ...b.device.v]) x.dispose();
    }
    for (const x of [...fresh.device.k, ...fresh.device.v]) x.dispose();
    await same(t, host, dev, `step ${step}`);
  }
  // a row zeroed on its own (an overflowed row) holds nothing, then takes new tokens from slot 0
  host.zero(2);
  dev.zero(2);
  runs = 0;
  await same(t, host, dev, 'a row zeroed');
  t.equal(runs, 1, 'zeroing alone is an update');
  const after = block(rng, 1, 2);
  host.append(2, { ...after.host, S: 2, b: 0, from: 0, count: 2 });
  dev.append(2, { ...after.device, S: 2, b: 0, from: 0, count: 2 });
  await same(t, host, dev, 'a zeroed row written again');
  for (const x of [...after.device.k, ...after.device.v]) x.dispose();
  // every row but one leaves: the slot count halves on both
  while (host.n > 1) {
    host.remove(host.n - 1);
    dev.remove(dev.n - 1);
  }
  const keep = host.len[0];
  host.reserve(keep + 1);
  dev.reserve(keep + 1);
  await same(t, host, dev, 'one row left');
  t.equal(dev.P, host.P, 'the same slot count rule');
  runs = 0;
  await dev.flush();
  t.equal(runs, 0, 'nothing planned: no update');
  t.match(dev.source(0), { S: dev.P, b: 0, from: 0, count: keep }, 'a row as a source');
  dev.remove(0);
  await dev.flush();
  t.equal(dev.bytes, 0, 'no rows: no cache');
  for (const x of [...pre.device.k, ...pre.device.v]) x.dispose();
  t.equal(live, 0, 'every tensor given back');
  t.equal(liveValues(), liveBefore, 'the binding holds no value more than before');
  t.rejects(dev.past(), /no rows/);
});

t.test('planning errors are caught before the device is asked', async (t) => {
  const dev = new DeviceKvStore(shape, updater, 1, 32);
  const b = block(new Rng(4), 1, 4);
  dev.push({ ...b.device, S: 4, b: 0, from: 0, count: 4 });
  t.throws(() => dev.append(0, { ...b.device, S: 4, b: 0, from: 0, count: 1 }), /planned already/);
  t.throws(() => dev.source(0), /flush/);
  t.throws(() => dev.pushEmpty(), /full/);
  await dev.flush();
  t.throws(() => dev.append(0, { ...b.device, S: 4, b: 0, from: 0, count: 13 }), /no room/);
  t.throws(() => new DeviceKvStore(shape, updater, 2, 32).pushEmpty(33), /at most 32/);
  dev.dispose();
  for (const x of [...b.device.k, ...b.device.v]) x.dispose();
  t.equal(live, 0, 'every tensor given back');
});
