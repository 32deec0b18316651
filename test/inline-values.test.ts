import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadConfig } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness, post } from './helpers/api.ts';

// The values of inline vectors are kept by hash for receipts, within a quota in bytes: the least
// recently used go first, and a receipt naming them gets 410.

const read = (f: string) => readFileSync(new URL(`../${f}`, import.meta.url), 'utf8');

t.test('STEERD_INLINE_VALUES_MAX_BYTES: one default in src/config.ts, .env.example and the README', async (t) => {
  const value = loadConfig({}).limits.inlineValuesMaxBytes;
  const documented = /Env STEERD_INLINE_VALUES_MAX_BYTES\. Default (\d+)/.exec(read('src/config.ts'))?.[1];
  const example = /^# STEERD_INLINE_VALUES_MAX_BYTES=(\d+)$/m.exec(read('.env.example'))?.[1];
  const table = /^\| \| `STEERD_INLINE_VALUES_MAX_BYTES` \| `(\d+)` \|/m.exec(read('README.md'))?.[1];
  t.equal(Number(documented), value, 'where it is declared');
  t.equal(Number(example), value, '.env.example');
  t.equal(Number(table), value, "the README's configuration table");
  t.equal(loadConfig({ STEERD_INLINE_VALUES_MAX_BYTES: '1000' }).limits.inlineValuesMaxBytes, 1000);
});

t.test('inline values beyond the quota: the least recently used go, their receipts get 410', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'steerd-inline-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const model = join(root, 'model');
  writeTinyCheckpoint(model, { layers: 2, embd: 64, heads: 4, ctx: 64, seed: 3 });
  // 64 float32 values are 256 bytes (268 in a values file): two fit in 600 bytes, three do not
  const h = await harness(model, (c) => ({ ...c, limits: { ...c.limits, inlineValuesMaxBytes: 600 } }));
  t.teardown(() => h.close());
  const receipts = [];
  for (const k of [1, 2, 3]) {
    const values = Array.from({ length: 64 }, (_, i) => Math.sin(i * k));
    const r = await post(h.app, '/v1/generate', {
      prompt: 'Hello',
      max_new_tokens: 2,
      temperature: 0,
      interventions: [{ vector: { values }, layer: 1, coeff: 1 }],
    });
    t.equal(r.statusCode, 200, r.body.slice(0, 200));
    receipts.push(r.json().receipt);
  }
  const first = await post(h.app, '/v1/replay', { receipt: receipts[0] });
  t.equal(first.statusCode, 410, first.body.slice(0, 200));
  t.match(first.json().error, { code: 'gone', message: /no longer kept/ });
  for (const i of [1, 2]) {
    const r = await post(h.app, '/v1/replay', { receipt: receipts[i] });
    t.equal(r.statusCode, 200, `receipt ${i}: ${r.body.slice(0, 200)}`);
    t.equal(r.json().identical, true);
  }
});
