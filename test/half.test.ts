/**
 * float16 weights (`dtype: float16`, half-weights.ts): the float32 → binary16 conversion, the copy
 * written once beside the checkpoint, and the engine's accuracy with it against the float64
 * reference (stated in the README: GPU notes).
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { halfNames } from '../src/model/gpt2/params.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { fromHalf, halfBits, toHalf } from '../src/model/half.ts';
import { ensureHalfWeights, HALF_WEIGHTS_FILE, halfLayout } from '../src/model/half-weights.ts';
import { Rng } from '../src/util/rng.ts';
import { greedyAccuracy, referenceGreedy } from './helpers/engine-util.ts';
import { startEngine } from './helpers/provider.ts';
import { loadReference } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-half-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

t.test('binary16: exact values round-trip, the rest round to nearest, ties to even', async (t) => {
  let bad = 0;
  let ties = 0;
  for (let h = 0; h < 0x10000; h++) {
    const x = fromHalf(h);
    if (Number.isNaN(x)) {
      if ((toHalf(x) & 0x7c00) !== 0x7c00 || !(toHalf(x) & 0x3ff)) bad++;
      continue;
    }
    if (toHalf(x) !== h) bad++;
    if (toHalf(-x) !== (h ^ 0x8000)) bad++;
    // between a positive finite half and the next: the midpoint is a float32 (12 significant bits)
    // and goes to the even one of the two; just off it, to the nearer
    if (h >= 0x7bff) continue;
    const y = fromHalf(h + 1);
    const mid = (x + y) / 2;
    const eps = (y - x) / 8;
    if (toHalf(mid) !== (h & 1 ? h + 1 : h)) bad++;
    if (toHalf(mid - eps) !== h || toHalf(mid + eps) !== h + 1) bad++;
    if (toHalf(-(mid + eps)) !== ((h + 1) | 0x8000)) bad++;
    ties++;
  }
  t.equal(bad, 0, `every one of the 65536 patterns (${ties} midpoints)`);
  t.equal(toHalf(65519), 0x7bff, 'below the overflow midpoint: the largest half, 65504');
  t.equal(toHalf(65520), 0x7c00, 'the overflow midpoint ties to even: Inf');
  t.equal(toHalf(1e9), 0x7c00, 'beyond: Inf');
  t.equal(toHalf(-Infinity), 0xfc00);
  t.equal(toHalf(2 ** -25), 0, 'half the smallest subnormal ties to even: 0');
  t.equal(toHalf(2 ** -25 * 1.0001), 1, 'just above it: the smallest subnormal');
  t.equal(toHalf(-0), 0x8000, '-0 keeps its sign');
  t.equal(toHalf(1e-10), 0, 'far below: 0');
  t.same([...halfBits(Float32Array.of(1, -2, 0.5))], [0x3c00, 0xc000, 0x3800]);
});

t.test('the float16 copy: written once, atomically, the source rounded; another checkpoint rewrites it', async (t) => {
  const dir = join(root, 'copy');
  writeTinyCheckpoint(dir, { layers: 2, embd: 64, heads: 4, ctx: 64, seed: 3 });
  const ck = openCheckpoint(dir);
  t.equal(ensureHalfWeights(ck), true, 'written');
  const file = join(dir, HALF_WEIGHTS_FILE);
  const mtime = statSync(file).mtimeMs;
  t.equal(ensureHalfWeights(ck), false, 'there already: not written again');
  t.equal(statSync(file).mtimeMs, mtime);
  t.same(
    readdirSync(dir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temp file left',
  );
  const bytes = readFileSync(file);
  const src = readFileSync(ck.weightsFile);
  const { entries } = halfLayout(ck);
  t.same([...entries.keys()], halfNames(2), 'the four linear maps of each block');
  let bad = 0;
  for (const [name, e] of entries) {
    const s = ck.params.get(name)!;
    const f32 = new Float32Array(src.buffer.slice(src.byteOffset + s.offset, src.byteOffset + s.offset + s.length));
    const f16 = new Uint16Array(
      bytes.buffer.slice(bytes.byteOffset + e.offset, bytes.byteOffset + e.offset + e.length),
    );
    t.equal(f16.length, f32.length, `${name}: every value`);
    for (let i = 0; i < f32.length; i++) if (f16[i] !== toHalf(f32[i])) bad++;
  }
  t.equal(bad, 0, 'each value the float32 one rounded');
  // weights rewritten in place with others of the same layout (a fine-tune): the layout fingerprint
  // is the same, the copy is not
  const edited = readFileSync(ck.weightsFile);
  edited.writeFloatLE(edited.readFloatLE(edited.length - 4) + 1, edited.length - 4);
  await new Promise((r) => setTimeout(r, 20)); // another modification time
  writeFileSync(ck.weightsFile, edited);
  t.equal(openCheckpoint(dir).fingerprint, ck.fingerprint, 'the same layout');
  t.equal(ensureHalfWeights(openCheckpoint(dir)), true, 'weights rewritten in place: the copy is written again');
  // a copy of other weights (another checkpoint written in this directory) is not taken
  writeTinyCheckpoint(dir, { layers: 2, embd: 64, heads: 4, ctx: 64, seed: 4 });
  t.equal(ensureHalfWeights(openCheckpoint(dir)), true, 'another checkpoint: written again');
  // a torn copy (cut short) is written again
  writeFileSync(file, readFileSync(file).subarray(0, 1000));
  t.equal(ensureHalfWeights(openCheckpoint(dir)), true, 'a copy cut short: written again');
  t.ok(existsSync(file));
});

t.test('the engine with float16 weights against the float64 reference', async (t) => {
  const dir = join(root, 'engine');
  writeTinyCheckpoint(dir, { layers: 3, embd: 128, heads: 2, ctx: 128, seed: 4, initScale: 10 });
  const ref = loadReference(dir);
  const rng = new Rng(3);
  const prompt = Array.from({ length: 40 }, () => Math.floor(rng.next() * 50000));
  const greedy = referenceGreedy(ref, prompt, 8);
  const errors: Record<string, number> = {};
  for (const dtype of ['float32', 'float16'] as const) {
    const eng = await startEngine({ model: dir, dtype, provider: 'cpu' });
    try {
      t.equal(eng.info.dtype, dtype);
      const got = await greedyAccuracy(eng, ref, prompt);
      const { max, top } = got;
      errors[dtype] = max;
      t.equal(top, prompt.length - 1, `${dtype}: every position's most likely token is the reference's`);
      t.same(got.ids, greedy.ids, `${dtype}: the reference's greedy tokens`);
    } finally {
      await eng.close();
    }
  }
  // measured: float32 4.6e-6, float16 6.4e-3 (products in float16, the rest float32)
  t.ok(errors.float32 < 1e-4, `float32: prompt logprobs within 1e-4 (${errors.float32.toExponential(2)})`);
  t.ok(errors.float16 < 2e-2, `float16: prompt logprobs within 2e-2 (${errors.float16.toExponential(2)})`);
  t.ok(errors.float16 > 10 * errors.float32, 'and the float16 graph is the one that ran');
  t.ok(existsSync(join(dir, HALF_WEIGHTS_FILE)), 'the copy beside the checkpoint');
});
