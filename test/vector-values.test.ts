import * as fs from 'node:fs';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { vectorHash } from '../src/store/content.ts';
import { FileVectorStore } from '../src/store/file-vectors.ts';
import { type StoredVector, VALUES_TTL_S } from '../src/store/types.ts';
import { awkward, bytes, roundTrip, storedVector } from './helpers/vectors.ts';

const H = 8;
const cjsFs = createRequire(import.meta.url)('node:fs') as typeof fs;
const DAY_MS = 24 * 3600 * 1000;

const vector = (name: string, seed: number, shape: number[] = [H]): StoredVector =>
  storedVector(name, shape, H, (i) => Math.cos(i + seed));

/** A data directory inside a root of its own, so that the test can see nothing was written beside it. */
function tempStore(t: Test) {
  const root = mkdtempSync(join(tmpdir(), 'steerd-values-'));
  const data = join(root, 'data');
  mkdirSync(data);
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  return { root, data, values: join(data, 'values'), store: new FileVectorStore(data) };
}

const age = (file: string, ms: number) => {
  const then = new Date(Date.now() - ms);
  utimesSync(file, then, then);
};

t.test('registered vectors are found by hash, shape and values exact', async (t) => {
  const { store } = tempStore(t);
  const dir = vector('dir', 1);
  const seq = vector('seq', 2, [3, H]);
  await store.put(dir, { replace: false, max: 10 });
  await store.put(seq, { replace: false, max: 10 });
  for (const v of [dir, seq]) {
    const got = await store.getValues(v.hash);
    t.ok(got, `${v.name} found`);
    t.same(got!.shape, v.shape, `${v.name}: shape`);
    t.ok(bytes(got!.values).equals(bytes(v.values)), `${v.name}: values bit for bit`);
  }
  t.equal(await store.getValues('0'.repeat(64)), null, 'an unknown hash: null');
});

t.test('values put by hash are got back bit for bit, [H] and [k, H]', async (t) => {
  const { store, values } = tempStore(t);
  for (const shape of [[H], [1, H], [5, H]]) {
    const hash = await roundTrip(t, store, shape);
    t.ok(existsSync(join(values, `${hash}.bin`)), 'kept in values/<hash>.bin');
  }
  // a store opened afresh on the same directory sees them (nothing lives only in memory)
  const v = awkward(H, 9);
  const hash = vectorHash([H], v);
  await store.putValues(hash, [H], v);
  const again = new FileVectorStore(join(values, '..'));
  t.ok(bytes((await again.getValues(hash))!.values).equals(bytes(v)));
  t.equal(await store.getValues(vectorHash([H], awkward(H, 10))), null, 'values never put: null');
});

t.test('values must match their hash', async (t) => {
  const { store, values } = tempStore(t);
  const v = awkward(2 * H, 1);
  const hash = vectorHash([2, H], v);
  await t.rejects(store.putValues(hash, [2 * H], v), /do not have the hash/, 'another shape is another hash');
  await t.rejects(store.putValues(hash, [3, H], v), /does not describe/);
  await t.rejects(store.putValues(hash, [2, H], awkward(2 * H, 2)), /do not have the hash/);
  t.same(readdirSync(values), [], 'nothing written');
});

t.test('deleted and replaced vectors stay found by hash', async (t) => {
  const { store, values } = tempStore(t);
  const first = vector('v', 1, [2, H]);
  const second = vector('v', 2);
  const gone = vector('gone', 3);
  await store.put(first, { replace: false, max: 10 });
  await store.put(gone, { replace: false, max: 10 });
  await store.put(second, { replace: true, max: 10 });
  await store.delete('gone');
  await t.rejects(store.get('gone'), { status: 404, message: /no vector named/ });
  for (const v of [first, second, gone]) {
    const got = await store.getValues(v.hash);
    t.same(got?.shape, v.shape, `${v.name} ${v.hash.slice(0, 8)}: shape`);
    t.ok(got && bytes(got.values).equals(bytes(v.values)), 'values');
  }
  t.same(readdirSync(values).sort(), [`${first.hash}.bin`, `${gone.hash}.bin`].sort(), 'the released ones kept');
  // replacing a vector by the same values keeps nothing extra; deleting the last name keeps them
  await store.put(vector('v', 2), { replace: true, max: 10 });
  t.notOk(existsSync(join(values, `${second.hash}.bin`)));
  await store.delete('v');
  t.ok(existsSync(join(values, `${second.hash}.bin`)));
});

t.test('expiry: old values are pruned, named and refreshed ones are not', async (t) => {
  const { store, values } = tempStore(t);
  const named = vector('named', 1);
  await store.put(named, { replace: false, max: 10 });
  const kept = (seed: number) => {
    const v = awkward(H, seed);
    return { v, hash: vectorHash([H], v) };
  };
  const [old, fresh, refreshed] = [kept(1), kept(2), kept(3)];
  for (const x of [old, fresh, refreshed]) await store.putValues(x.hash, [H], x.v);
  await store.putValues(named.hash, named.shape, named.values);
  const file = (hash: string) => join(values, `${hash}.bin`);
  age(file(old.hash), VALUES_TTL_S * 1000 + DAY_MS);
  age(file(named.hash), VALUES_TTL_S * 1000 + DAY_MS);
  age(file(fresh.hash), VALUES_TTL_S * 1000 - DAY_MS);
  age(file(refreshed.hash), VALUES_TTL_S * 1000 + DAY_MS);
  await store.putValues(refreshed.hash, [H], refreshed.v);
  t.ok(Date.now() - statSync(file(refreshed.hash)).mtimeMs < 60_000, 'putValues of kept values refreshes the mtime');

  t.equal(await store.pruneValues(), 1, 'one file pruned');
  t.equal(await store.getValues(old.hash), null, 'values unused for longer than VALUES_TTL_S are gone');
  t.ok(await store.getValues(fresh.hash), 'younger ones stay');
  t.ok(await store.getValues(refreshed.hash), 'refreshed ones stay');
  t.ok(existsSync(file(named.hash)), 'values a name refers to are never pruned');
  t.ok(await store.getValues(named.hash));

  // a crashed write's temp file goes once it is an hour old
  const stray = join(values, `.${old.hash}.0badf00d.tmp`);
  const recent = join(values, `.${old.hash}.00c0ffee.tmp`);
  writeFileSync(stray, 'torn');
  writeFileSync(recent, 'in flight');
  age(stray, 2 * 3600 * 1000);
  t.equal(await store.pruneValues(), 1);
  t.notOk(existsSync(stray), 'an old temp file is pruned');
  t.ok(existsSync(recent), 'a recent one is not');
});

t.test('putValues prunes by itself, at most once a minute', async (t) => {
  const { data, values } = tempStore(t);
  const seed = new FileVectorStore(data);
  const xs = [1, 2, 3, 4].map((s) => {
    const v = awkward(H, s);
    return { v, hash: vectorHash([H], v) };
  });
  for (const x of xs.slice(0, 2)) await seed.putValues(x.hash, [H], x.v);
  age(join(values, `${xs[0].hash}.bin`), VALUES_TTL_S * 1000 + 1000);
  const store = new FileVectorStore(data); // has not pruned yet
  await store.putValues(xs[2].hash, [H], xs[2].v);
  t.notOk(existsSync(join(values, `${xs[0].hash}.bin`)), 'the first putValues prunes');
  age(join(values, `${xs[1].hash}.bin`), VALUES_TTL_S * 1000 + 1000);
  await store.putValues(xs[3].hash, [H], xs[3].v);
  t.ok(existsSync(join(values, `${xs[1].hash}.bin`)), 'the next, within the minute, does not');
  t.equal(await store.pruneValues(), 1, 'an explicit prune does');
});

t.test('a malformed hash is refused without touching the filesystem', async (t) => {
  const { root, data, values, store } = tempStore(t);
  const v = awkward(H, 1);
  const good = vectorHash([H], v);
  writeFileSync(join(root, 'secret.bin'), 'not values');
  const bad = [
    '../secret',
    `../../${good.slice(6)}`,
    good.toUpperCase(),
    good.slice(1),
    `${good}0`,
    `${good.slice(0, 63)}/`,
    '',
    '*',
  ];
  for (const h of bad) {
    t.equal(await store.getValues(h), null, `getValues(${JSON.stringify(h)}) is null`);
    await t.rejects(store.putValues(h, [H], v), /not a vector hash/, `putValues(${JSON.stringify(h)}) refused`);
  }
  t.same(readdirSync(root).sort(), ['data', 'secret.bin'], 'nothing written beside the data dir');
  t.same(readdirSync(data).sort(), ['presets', 'values', 'vectors']);
  t.same(readdirSync(values), [], 'nor inside it');
});

t.test('a torn or foreign values file is not served, and putValues repairs it', async (t) => {
  const { values, store } = tempStore(t);
  const v = awkward(2 * H, 4);
  const hash = vectorHash([2, H], v);
  await store.putValues(hash, [2, H], v);
  const file = join(values, `${hash}.bin`);
  const whole = fs.readFileSync(file);
  writeFileSync(file, whole.subarray(0, whole.length - 3));
  t.equal(await store.getValues(hash), null, 'truncated: null');
  const other = Buffer.from(whole);
  other[other.length - 1] ^= 1;
  writeFileSync(file, other);
  t.equal(await store.getValues(hash), null, 'values not matching their hash: null');
  await store.putValues(hash, [2, H], v);
  t.ok(fs.readFileSync(file).equals(whole), 'rewritten whole');
});

t.test('a crash mid-write never leaves a torn file', async (t) => {
  const { data, values } = tempStore(t);
  const opened: string[] = [];
  const renamed: string[] = [];
  let crash = false;
  // node:fs itself wrapped for this test (its ESM bindings re-synced), restored at its end
  const real = { openSync: fs.openSync, renameSync: fs.renameSync, writeSync: fs.writeSync };
  const patch = (f: Partial<typeof real>) => {
    Object.assign(cjsFs, f);
    syncBuiltinESMExports();
  };
  t.teardown(() => patch(real));
  patch({
    // files opened to be written (readFileSync opens through here too, with flag 'r')
    openSync: ((path: string, flags?: unknown, ...rest: unknown[]) => {
      if (flags !== undefined && !/^rs?$/.test(String(flags))) opened.push(path);
      return (real.openSync as (...a: unknown[]) => number)(path, flags, ...rest);
    }) as typeof fs.openSync,
    renameSync: (from, to) => {
      renamed.push(String(to));
      return real.renameSync(from, to);
    },
    // the process "dies" after writing part of the data
    writeSync: ((fd: number, buf: Buffer, off: number | null = 0) => {
      if (!crash) return real.writeSync(fd, buf, off);
      real.writeSync(fd, buf, off, Math.max(1, (buf.length - (off ?? 0)) >> 1));
      throw Object.assign(new Error('EIO: simulated crash'), { code: 'EIO' });
    }) as typeof fs.writeSync,
  });
  const store = new FileVectorStore(data);
  const v = awkward(3 * H, 5);
  const hash = vectorHash([3, H], v);
  const old = vector('v', 1);
  await store.put(old, { replace: false, max: 10 });
  // kept by hash already, so that the replace below only refreshes them and crashes writing the record
  await store.putValues(old.hash, old.shape, old.values);
  crash = true;
  opened.length = 0;
  await t.rejects(store.putValues(hash, [3, H], v), /simulated crash/);
  t.ok(opened.length > 0 && opened.every((p) => /\/\.[^/]+\.tmp$/.test(p)), 'only temp files are written to');
  t.same(readdirSync(values), [`${old.hash}.bin`], 'no new values file, torn or whole (and the temp file is removed)');
  t.equal(await store.getValues(hash), null);
  opened.length = 0;
  await t.rejects(store.put(vector('v', 2), { replace: true, max: 10 }), /simulated crash/);
  t.ok(
    opened.some((p) => p.startsWith(join(data, 'vectors', '.v.'))),
    'the replace crashed writing the record (to a temp file)',
  );
  const kept = await store.get('v');
  t.ok(bytes(kept.values).equals(bytes(old.values)), 'a crashed replace leaves the old vector whole');
  t.same(readdirSync(join(data, 'vectors')), ['v.json'], 'and no other file');
  crash = false;
  await store.putValues(hash, [3, H], v);
  t.ok(renamed.includes(join(values, `${hash}.bin`)), 'a values file appears only by rename');
  t.ok(bytes((await store.getValues(hash))!.values).equals(bytes(v)));
});
