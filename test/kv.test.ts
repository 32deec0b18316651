import t from 'tap';
import { type KvSource, KvStore } from '../src/engine/kv.ts';

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
const at = (s: KvStore, r: number, l: number, h: number, p: number) =>
  s.k[l][((r * shape.nHead + h) * s.P + p) * shape.headDim];

t.test(
  'rows keep their tokens through growth, swap-removal and shrinking; an empty store frees its memory',
  async (t) => {
    const s = new KvStore(shape, 8, 1024);
    const a = s.push(source(1, 5));
    const b = s.push(source(2, 40)); // P grows past 16
    const c = s.push(source(3, 2)); // rows grow past 2
    t.same([a, b, c], [0, 1, 2]);
    t.equal(s.P, 48);
    t.equal(at(s, 1, 1, 2, 39), 2 * 1e4 + 100 + 20 + 39, 'row b intact after growth');
    t.equal(at(s, 0, 0, 1, 4), 1e4 + 10 + 4, 'row a intact');
    t.same(s.maskRow(2, 1).filter((x) => x === 1).length, 3, 'mask: 2 slots + the new token');
    t.equal(s.remove(1), 2, 'the last row moved into the hole');
    t.same(s.len, [5, 2]);
    t.equal(at(s, 1, 1, 0, 1), 3 * 1e4 + 100 + 1, 'moved row intact');
    s.reserve(Math.max(...s.len) + 1);
    t.equal(s.P, 16, 'P shrinks when the rows need at most half of it');
    t.equal(at(s, 0, 1, 2, 4), 1e4 + 100 + 20 + 4, 'rows intact after shrinking');
    s.append(1, { ...source(4, 1), b: 0 });
    t.equal(at(s, 1, 0, 0, 2), 4 * 1e4, 'append writes after the last token');
    t.same(s.past().k[0].length, 2 * shape.nHead * s.P * shape.headDim, 'past() views the active rows only');
    s.remove(0);
    s.remove(0);
    t.equal(s.n, 0);
    t.same([s.P, s.k.length], [0, 0], 'memory given back');
    t.throws(() => {
      const one = new KvStore(shape, 1, 64);
      one.push(source(1, 1));
      one.push(source(2, 1));
    }, /full/);
  },
);
