/**
 * `steerd:session_input_bytes_total` / `_output_bytes_total`: the host bytes that cross into and out
 * of the model's session runs. On the CPU provider the KV cache is fed to every pass, so the input
 * bytes of a decoded token grow with the context it attends over: measured here as the difference
 * between two generations that differ only in their number of decoded tokens.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { RuntimeName } from '../src/engine/runtime/names.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness, post } from './helpers/api.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-bytes-'));
const model = join(root, 'model');
const [L, H] = [2, 64];
writeTinyCheckpoint(model, { layers: L, embd: H, heads: 4, ctx: 256, seed: 6, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const counter = (metrics: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);

/** Input and output bytes per decoded token at a short and a long context, through `binding` on the CPU provider. */
async function perTokenBytes(t: Test, binding: RuntimeName, location: 'host' | 'device') {
  const h = await harness(model, (c) => ({ ...c, provider: 'cpu', binding }));
  t.teardown(() => h.close());
  const info = (await h.app.inject('/v1/model')).json();
  t.equal(info.binding, binding, `/v1/model: binding ${binding}`);
  t.equal(info.kv_cache?.location ?? 'host', location, `/v1/model: the cache on the ${location}`);
  /**
   * Both counters once the engine's last report is in: it follows the last token, and a Redis
   * worker's reaches Redis up to 100 ms later. Unchanged for 300 ms counts as settled.
   */
  const settled = async () => {
    let last = '';
    let since = Date.now();
    for (const t0 = Date.now(); Date.now() - t0 < 10_000; await new Promise((r) => setTimeout(r, 50))) {
      const m = (await h.app.inject('/metrics')).body;
      const now = ['input', 'output'].map((w) => counter(m, `steerd:session_${w}_bytes_total`)).join();
      if (now !== last) [last, since] = [now, Date.now()];
      else if (Date.now() - since >= 300) break;
    }
    return last.split(',').map(Number);
  };
  const spent = async (prompt: string, n: number) => {
    const [in0, out0] = await settled();
    const r = await post(h.app, '/v1/generate', { prompt, max_new_tokens: n, temperature: 0 });
    t.equal(r.json().finish_reason, 'length', `${n} tokens generated`);
    const [in1, out1] = await settled();
    return { input: in1 - in0, output: out1 - out0 };
  };
  /** Bytes of the 16 decode passes between the 1st and the 17th token. */
  const perToken = async (promptLength: number) => {
    const prompt = `Hello${' world'.repeat(promptLength - 1)}`; // a token per word
    const one = await spent(prompt, 1);
    const many = await spent(prompt, 17);
    t.ok(one.input > 0 && one.output > 0, `a prompt of ${promptLength}: counted (${one.input} B in)`);
    return { input: (many.input - one.input) / 16, output: (many.output - one.output) / 16 };
  };
  const [short, long] = [await perToken(8), await perToken(160)];
  await settled();
  const live = counter((await h.app.inject('/metrics')).body, 'steerd:ort_values_live');
  return { short, long, live };
}

t.test('input bytes per decoded token follow the context on the host path', async (t) => {
  // the host path: the CPU provider through onnxruntime-node, whatever STEERD_TEST_PROVIDER and
  // STEERD_TEST_BINDING say (slow/webgpu.test.ts and the capi test below: the device path)
  const { short, long } = await perTokenBytes(t, 'node', 'host');
  // every pass fetches the new token's keys and values and the logits: the same for both
  t.equal(long.output, short.output, 'output bytes per token do not depend on the context');
  // the cache fed per pass: 2 × layers × 4 bytes × H per slot, ≥ 160 slots against ≤ 32
  const kvPerSlot = 2 * L * 4 * H;
  t.ok(
    long.input - short.input >= (160 - 32) * kvPerSlot,
    `input bytes per token grow with the context (${short.input} → ${long.input})`,
  );
  t.ok(long.input / short.input > 1.5, `long/short ${(long.input / short.input).toFixed(2)} > 1.5 on the host path`);
});

t.test(
  'through the capi binding the cache stays in the binding: input bytes per token do not follow the context',
  async (t) => {
    // the device path on the CPU provider: the cache is OrtValues the binding keeps (capi.ts), fed
    // to every pass without crossing into JS; only ids, positions, steering and the plan cross
    const { short, long, live } = await perTokenBytes(t, 'capi', 'device');
    t.equal(live, 0, 'steerd:ort_values_live: every OrtValue given back once the requests are done');
    t.equal(long.output, short.output, 'output bytes per token do not depend on the context');
    t.ok(long.input > 0, `input bytes per token counted (${long.input})`);
    t.ok(long.input / short.input <= 1.5, `long/short ${(long.input / short.input).toFixed(2)} ≤ 1.5 through capi`);
    const kvPerSlot = 2 * L * 4 * H;
    t.ok(long.input < 32 * kvPerSlot, `less per token than 32 slots of cache would be (${long.input} B)`);
  },
);
