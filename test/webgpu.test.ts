import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Engine } from '../src/engine/engine.ts';
import type { Intervention } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { referenceGreedy, run } from './helpers/engine-util.ts';
import { maxAbsDiff } from './helpers/graph-run.ts';
import { loadReference, referenceForward } from './helpers/reference.ts';

// The engine on ONNX Runtime's WebGPU provider (a software Vulkan device where there is no GPU: the
// README's GPU notes). A pass there takes about a second on two cores, so this suite is the few
// passes that cover what differs from the CPU path: the serving graph without empty tensors (the
// provider crashed on them), one cache group holding rows of every length, rows joining and leaving.
// STEERD_REQUIRE_WEBGPU=1 (CI) turns a missing adapter into a failure instead of a skip.

const root = mkdtempSync(join(tmpdir(), 'steerd-webgpu-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 2, embd: 64, heads: 4, ctx: 128, seed: 5, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));

let engine: Engine | undefined;
try {
  engine = await Engine.start({ model: dir, provider: 'webgpu', batchCapacity: 4, tokenBudget: 32 });
} catch (e) {
  if (process.env.STEERD_REQUIRE_WEBGPU === '1') throw e;
  t.plan(0, `no WebGPU adapter here: ${(e as Error).message.slice(0, 160)}`);
}

if (engine) {
  const eng = engine;
  t.teardown(() => eng.close());
  const ref = loadReference(dir);
  const H = 64;
  const rng = new Rng(8);
  const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
  const steer: Intervention[] = [
    { layer: 1, coeff: 3, values: Float32Array.from({ length: H }, () => 0.2 * rng.normal()), rows: 1 },
    {
      layer: 1,
      site: 'mlp_out',
      op: 'ablate',
      coeff: 1,
      values: Float32Array.from({ length: H }, () => rng.normal()),
      rows: 1,
    },
  ];

  t.test('greedy decoding equals the float64 reference, rows of different lengths joining and leaving', async (t) => {
    t.equal(eng.info.provider, 'webgpu');
    t.equal(eng.info.kv_cache?.classes.length, 1, 'one cache group on this provider');
    // a short and a long prompt (chunked: 40 tokens > the 32-token prefill budget), one steered,
    // and one that ends early: the batch shrinks under the others
    const reqs = [
      { prompt: ids(3), n: 6, interventions: [] },
      { prompt: ids(40), n: 6, interventions: steer },
      { prompt: ids(9), n: 2, interventions: steer },
    ];
    const got = await Promise.all(
      reqs.map((r) =>
        run(eng, {
          prompt: r.prompt,
          max_new_tokens: r.n,
          temperature: 0,
          stop_at_eos: false,
          interventions: r.interventions,
        }),
      ),
    );
    for (const [i, r] of reqs.entries()) {
      const want = referenceGreedy(ref, r.prompt, r.n, r.interventions);
      t.same(got[i].ids, want.ids, `request ${i}: the reference's tokens`);
      t.ok(maxAbsDiff(got[i].logprobs, want.logprobs) < 1e-3, `request ${i}: logprobs within 1e-3 of the reference`);
    }
  });

  t.test('activations and the logit lens (a pass with nothing cached) match the reference', async (t) => {
    const prompt = ids(5);
    const lens = Float32Array.from({ length: 2 * H }, () => rng.normal());
    const got = await eng.activations({ prompt, layers: [0, 2], reduce: 'none', lens });
    const want = referenceForward(ref, prompt);
    for (const l of [0, 2]) {
      const flat = want.sites.resid_pre[l].flatMap((v) => [...v]);
      t.ok(maxAbsDiff(got.activations[l], flat) < 1e-3, `resid_pre.${l} within 1e-3`);
    }
    t.equal(got.lens?.length, 2 * ref.vocab, 'lens logits for both vectors');
  });

  t.test('host bytes are counted for every pass', async (t) => {
    const { input, output } = eng.kvUsage.hostBytes;
    t.ok(input > 0 && output > 0, `input ${input}, output ${output}`);
  });
}
