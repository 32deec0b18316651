import t from 'tap';
import { bytesPerToken, classOf, kvBudget, sizeClasses } from '../src/engine/kv/budget.ts';
import { HostKvStore } from '../src/engine/kv/host-store.ts';
import { type KvSource, slotsFor } from '../src/engine/kv/store.ts';
import { cudaFreeMemory, type RunCommand } from '../src/engine/runtime/device-memory.ts';

const shape = { nLayer: 2, nHead: 3, headDim: 4 };
/** A [1, nh, count, hd] source whose values encode (tag, layer, head, position, i). */
function source(tag: number, count: number): KvSource {
  const mk = (kv: number) =>
    Array.from({ length: shape.nLayer }, (_, l) =>
      Float32Array.from({ length: shape.nHead * count * shape.headDim }, (_, j) => {
        const h = Math.floor(j / (count * shape.headDim));
        const p = Math.floor(j / shape.headDim) % count;
        return tag * 1e4 + kv * 1e3 + l * 100 + h * 10 + p + (j % shape.headDim) / 10;
      }),
    );
  return { k: mk(0), v: mk(1), S: count, b: 0, from: 0, count };
}
/** Row r, layer l, head h, slot p of a store, as stored. */
const at = (s: HostKvStore, r: number, l: number, h: number, p: number) =>
  s.k[l][((r * shape.nHead + h) * s.P + p) * shape.headDim];
const rowBytes = (P: number) => P * bytesPerToken(shape);

t.test('rows keep their tokens through growth, swap-removal and shrinking', async (t) => {
  const s = new HostKvStore(shape, 8, 1024);
  const a = s.push(source(1, 5));
  t.equal(s.P, 16, 'the smallest slot count');
  const b = s.push(source(2, 40)); // P doubles past 16, to a power of two
  const c = s.push(source(3, 2));
  t.same([a, b, c], [0, 1, 2]);
  t.equal(s.P, 64);
  t.equal(at(s, 1, 1, 2, 39), 2 * 1e4 + 100 + 20 + 39, 'row b intact after growth');
  t.equal(at(s, 0, 0, 1, 4), 1e4 + 10 + 4, 'row a intact');
  t.equal(s.remove(1), 2, 'the last row moved into the hole');
  t.same(s.len, [5, 2]);
  t.equal(at(s, 1, 1, 0, 1), 3 * 1e4 + 100 + 1, 'moved row intact');
  s.reserve(Math.max(...s.len) + 1);
  t.equal(s.P, 16, 'P halves while the rows need at most a quarter of it');
  t.equal(at(s, 0, 1, 2, 4), 1e4 + 100 + 20 + 4, 'rows intact after shrinking');
  s.append(1, { ...source(4, 1), b: 0 });
  t.equal(at(s, 1, 0, 0, 2), 4 * 1e4, 'append writes after the last token');
  t.same(
    ((await s.past()).k[0] as Float32Array).length,
    2 * shape.nHead * s.P * shape.headDim,
    'past() views the active rows only',
  );
  t.match(s.source(1), { S: s.P, b: 1, from: 0, count: 3 }, "source() is a row's whole cache");
  s.remove(0);
  s.remove(0);
  t.equal(s.n, 0);
  t.ok(s.bytes > 0 && s.slack === s.bytes, 'an empty store keeps its pages for the next rows');
  s.compact();
  t.same([s.P, s.k.length, s.bytes], [0, 0, 0], 'compact() gives them back');
  t.throws(() => {
    const one = new HostKvStore(shape, 1, 64);
    one.push(source(1, 1));
    one.push(source(2, 1));
  }, /full/);
  t.throws(() => new HostKvStore(shape, 1, 64).push(source(1, 65)), /cannot hold/, 'a row never outgrows its class');
});

t.test('slot counts: powers of two from 16, aligned, capped at the class', async (t) => {
  t.same(
    [1, 16, 17, 33, 100, 1000].map((n) => slotsFor(n, 1024)),
    [16, 16, 32, 64, 128, 1024],
  );
  t.equal(slotsFor(100, 100), 112, 'a class that is not a power of two: its size, aligned to 16');
});

t.test(
  'committed memory: rows written since the last allocation; compact() gives back what rows that left used',
  async (t) => {
    const s = new HostKvStore(shape, 8, 64);
    for (let i = 0; i < 4; i++) s.push(source(i + 1, 10));
    t.equal(s.bytes, 4 * rowBytes(16), 'four rows of 16 slots');
    s.remove(0);
    s.remove(0);
    t.equal(s.bytes, 4 * rowBytes(16), 'pages of rows that left stay written');
    t.equal(s.slack, 2 * rowBytes(16));
    s.compact();
    t.same([s.bytes, s.slack], [2 * rowBytes(16), 0]);
    t.same(s.len, [10, 10], 'rows intact after compaction');
    t.equal(at(s, 0, 0, 0, 9), 3 * 1e4 + 9, 'the third row moved to the front by the second removal');
  },
);

t.test('size classes and the budget', async (t) => {
  t.same(sizeClasses(1024), [64, 128, 256, 512, 1024]);
  t.same(sizeClasses(128), [64, 128]);
  t.same(sizeClasses(300), [64, 128, 256, 300], 'the largest class is the context (or the budget)');
  t.same(sizeClasses(40), [40]);
  const c = sizeClasses(1024);
  t.same(
    [1, 64, 65, 96, 1024, 1025].map((n) => classOf(c, n)),
    [0, 0, 1, 1, 4, -1],
  );
  const per = bytesPerToken(shape);
  t.equal(per, 2 * 2 * 3 * 4 * 4, 'keys and values, every layer, float32');
  t.equal(kvBudget({ kvCacheTokens: 77 }, shape, 10_000), 77, 'tokens as given');
  t.equal(
    kvBudget({ kvCacheMemory: 0.5 }, shape, 1e9, () => 1000 * per),
    500,
    'a share of the memory available',
  );
  t.equal(
    kvBudget({ kvCacheMemory: 300 * per }, shape, 1e9, () => 1e12),
    300,
    'a size in bytes',
  );
  t.equal(
    kvBudget({}, shape, 128, () => 1e12),
    128,
    'at most batch capacity × context',
  );
});

t.test("the CUDA device's free memory, as nvidia-smi reports it, and a budget from it", async (t) => {
  const asked: string[][] = [];
  const answer =
    (out: string | Error): RunCommand =>
    (file, args) => {
      asked.push([file, ...args]);
      if (out instanceof Error) throw out;
      return out;
    };
  const one = '0, GPU-aaaa, 40536\n';
  const two = '0, GPU-aaaa, 1000\n1, GPU-bbbb, 2000\n';
  const MiB = 2 ** 20;
  t.equal(cudaFreeMemory(0, answer(one), {}), 40536 * MiB, 'one GPU: its free MiB, in bytes');
  t.same(asked[0], ['nvidia-smi', '--query-gpu=index,uuid,memory.free', '--format=csv,noheader,nounits']);
  t.equal(cudaFreeMemory(0, answer(two), {}), undefined, 'two GPUs CUDA may number fastest first: not known');
  t.equal(
    cudaFreeMemory(1, answer(two), { CUDA_DEVICE_ORDER: 'PCI_BUS_ID' }),
    2000 * MiB,
    'numbered as nvidia-smi does',
  );
  t.equal(cudaFreeMemory(0, answer(two), { CUDA_VISIBLE_DEVICES: '1' }), 2000 * MiB, 'CUDA_VISIBLE_DEVICES by index');
  t.equal(cudaFreeMemory(0, answer(two), { CUDA_VISIBLE_DEVICES: 'GPU-aaaa,1' }), 1000 * MiB, 'by UUID');
  t.equal(
    cudaFreeMemory(0, answer(one), { CUDA_VISIBLE_DEVICES: 'MIG-cccc' }),
    undefined,
    'a MIG partition: not known',
  );
  t.equal(cudaFreeMemory(0, answer('No devices were found\n'), {}), undefined, 'an answer that is not numbers');
  t.equal(cudaFreeMemory(0, answer(''), {}), undefined, 'no answer');
  t.equal(cudaFreeMemory(0, answer(new Error('spawn nvidia-smi ENOENT')), {}), undefined, 'no nvidia-smi');
  const shape = { nLayer: 48, nHead: 25, headDim: 64 };
  const per = bytesPerToken(shape);
  const device = () => cudaFreeMemory(0, answer('0, GPU-aaaa, 8192'), {})!;
  t.equal(kvBudget({ kvCacheMemory: 0.5 }, shape, 1e9, device), Math.floor((4096 * MiB) / per), 'half of it');
  let askedHost = false;
  kvBudget({ kvCacheTokens: 10 }, shape, 1e9, () => {
    askedHost = true;
    return 0;
  });
  t.notOk(askedHost, 'a budget in tokens asks nothing');
});
