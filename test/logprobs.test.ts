/** Top logprobs per generated token and the prompt's tokens scored, against the float64 reference. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { TokenEvent } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { collect } from './helpers/engine-util.ts';
import { startEngine } from './helpers/provider.ts';
import { loadReference, referenceForward } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-logprobs-'));
const dir = join(root, 'm');
writeTinyCheckpoint(dir, { layers: 2, embd: 64, heads: 4, ctx: 128, seed: 12, initScale: 10 });
const ref = loadReference(dir);
const engine = await startEngine({ model: dir, tokenBudget: 16 });
t.teardown(async () => {
  await engine.close();
  rmSync(root, { recursive: true, force: true });
});
const rng = new Rng(4);
const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));

function logSoftmax(row: Float64Array): Float64Array {
  let m = -Infinity;
  for (const v of row) m = Math.max(m, v);
  let z = 0;
  for (const v of row) z += Math.exp(v - m);
  return row.map((v) => v - m - Math.log(z));
}

t.test('top_logprobs: the most likely tokens at each generated position', async (t) => {
  const prompt = ids(7);
  const events: TokenEvent[] = [];
  for await (const e of engine.generate({
    prompt,
    max_new_tokens: 6,
    temperature: 0,
    stop_at_eos: false,
    top_logprobs: 5,
  }))
    if (e.type === 'token' && e.id >= 0) events.push(e);
  const seen = [...prompt];
  for (const [i, e] of events.entries()) {
    const lp = logSoftmax(referenceForward(ref, seen, undefined, { lastOnly: true }).logits[0]);
    const want = [...lp.keys()].sort((a, b) => lp[b] - lp[a]).slice(0, 5);
    t.same(
      e.top_logprobs!.map((x) => x.id),
      want,
      `token ${i}: the five most likely, in order`,
    );
    for (const x of e.top_logprobs!) t.ok(Math.abs(x.logprob - lp[x.id]) < 1e-4, `token ${i}: logprob of ${x.id}`);
    t.equal(e.top_logprobs![0].id, e.id, 'greedy picks the first');
    seen.push(e.id);
  }
});

t.test('prompt_logprobs: each prompt token given those before it, across prefill chunks', async (t) => {
  const prompt = ids(40); // three chunks of the 16-token budget
  const got = await collect(
    engine.generate({ prompt, max_new_tokens: 2, seed: 1, prompt_logprobs: 3, stop_at_eos: false }),
  );
  const scored = got.done.prompt_logprobs!;
  t.equal(scored.length, prompt.length);
  t.same(scored[0], { id: prompt[0], logprob: null, top_logprobs: [] }, 'the first token has no logprob');
  const full = referenceForward(ref, prompt);
  for (let i = 1; i < prompt.length; i++) {
    const lp = logSoftmax(full.logits[i - 1]);
    t.equal(scored[i].id, prompt[i]);
    t.ok(Math.abs(scored[i].logprob! - lp[prompt[i]]) < 1e-3, `token ${i}: ${scored[i].logprob} vs ${lp[prompt[i]]}`);
    t.equal(scored[i].top_logprobs.length, 3);
  }
  const plain = await collect(engine.generate({ prompt, max_new_tokens: 2, seed: 1, stop_at_eos: false }));
  t.same(plain.ids, got.ids, 'scoring the prompt changes nothing else');
  t.notOk('prompt_logprobs' in plain.done);
  t.throws(() => engine.generate({ prompt, top_logprobs: 21 }), {
    status: 400,
    message: /top_logprobs must be an integer in 0..20/,
  });
});
